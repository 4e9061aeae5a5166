"""The stream's use of :class:`~audioclip.model.incremental.IncrementalEncoder`: which windows share work.

Torch is imported only for a PyTorch classifier; an ONNX Runtime stream runs the export's incremental graphs.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..model.constants import SAMPLE_RATE, STRIDE_SAMPLES
from .buffer import Window
from .config import StreamConfig

log = logging.getLogger(__name__)

WindowScorer = Callable[[Window], tuple]
"""``scorer(window) -> (probs [1, L], similarities [1, L])``."""


class IncrementalScorer:
    """A classifier's scores of one stream's windows, each equal to ``classifier.scores(window)``, with the
    front end to layer2 shared between overlapping windows (a gap or a skipped window is handled by the
    encoder: it compares the overlapping samples). PyTorch's ``ZeroShotClassifier`` runs the eager
    stages; ONNX Runtime's ``OnnxClassifier`` the export's incremental graphs, without torch."""

    def __init__(self, classifier, window_samples: int, hop_samples: int):
        self.classifier = classifier
        self.window_samples = window_samples
        self.onnx = not hasattr(classifier, "model")
        if self.onnx:
            from ..export.incremental import OnnxIncrementalEncoder

            self.encoder = OnnxIncrementalEncoder(classifier.incremental_graphs(), window_samples,
                                                  hop_samples=hop_samples)
        else:
            from ..model.incremental import IncrementalEncoder

            self.encoder = IncrementalEncoder(classifier.model, window_samples, hop_samples=hop_samples)

    def __call__(self, window: Window, classifier=None) -> tuple:
        """The scores of ``window`` (its ``start`` in the stream's samples); ``classifier``: labels
        reloaded since (the same model), else the one given at construction."""
        classifier = self.classifier if classifier is None else classifier
        if len(window.samples) != self.window_samples:  # a short input's only window: scored whole
            return classifier.scores(window.samples[None])
        out = self.encoder.encode(window.samples, window.start)
        if self.onnx:
            return classifier.scores_of_tail(out)
        import torch

        return classifier.scores_of(out / torch.linalg.vector_norm(out, dim=-1, keepdim=True))

    def reset(self) -> None:
        self.encoder.reset()


def _trunk_blocks(classifier) -> tuple[int, int] | None:
    """The classifier's layer1 and layer2 block counts, or None when it cannot share work between windows
    (an ONNX export without incremental graphs, one line logged; a standalone head on PyTorch)."""
    if hasattr(classifier, "model"):
        if getattr(classifier, "precision", "fp32") == "bf16":
            log.debug("whole windows: PyTorch bf16 (autocast) is checked on whole windows only")
            return None
        if getattr(classifier, "linear", None) is not None:
            log.debug("whole windows: a standalone head scores pooled features, which the PyTorch incremental "
                      "path does not keep")
            return None
        from ..model.overlap import trunk_blocks

        return trunk_blocks(classifier.model.audio)
    if not hasattr(classifier, "incremental_graphs"):
        log.debug("whole windows: this classifier has no incremental path")
        return None
    try:
        return classifier.incremental_graphs().blocks
    except ValueError as e:
        log.info("whole windows: %s", e)
        return None


def window_scorer(classifier, config: StreamConfig, *, config_file: str | None = None,
                  announce: bool = True) -> IncrementalScorer | None:
    """The incremental scorer for ``classifier`` and ``config``, or None where windows are computed whole:
    ``config.exact_windows``, a classifier without an incremental path, or a hop that is not a multiple of
    ``STRIDE_SAMPLES`` (one log line then names the nearest aligned hop and what it would save).

    The hint names the setting the user can change: ``--hop`` on the command line, ``hop = ...`` in
    ``config_file`` when the stream comes from one. ``announce=False`` (a service's second and later
    sources) logs the hint and the work-sharing line at DEBUG, so that they are said once.
    """
    if config.exact_windows:
        return None
    blocks = _trunk_blocks(classifier)
    if blocks is None:
        return None
    from ..model.overlap import OverlapEncoder

    level = logging.INFO if announce else logging.DEBUG
    plan = OverlapEncoder(blocks, config.window_samples)
    hop = config.hop_samples
    if hop % STRIDE_SAMPLES:
        k = max(1, round(hop / STRIDE_SAMPLES))
        cost = plan.cost(k)
        if cost >= 1.0:  # windows too far apart to share work at the nearest aligned hop either
            return None
        aligned = k * STRIDE_SAMPLES / SAMPLE_RATE
        setting = f"--hop {aligned:.5f}" if config_file is None else f"hop = {aligned:.5f} in {config_file}"
        log.log(level, "hop %.4g s (%d samples) is not a multiple of %d samples: every window is computed whole; "
                "%s (%d x %d samples) would reuse the overlap and compute about %.0f%% less per window",
                config.hop, hop, STRIDE_SAMPLES, setting, k, STRIDE_SAMPLES, 100 * (1 - cost))
        return None
    cost = plan.cost(hop // STRIDE_SAMPLES)
    if cost >= 1.0:  # windows too far apart to overlap usefully
        return None
    exact = "--exact-windows" if config_file is None else f"exact_windows = true in {config_file}"
    log.log(level, "overlapping windows share their front end to layer2 (about %.0f%% less compute per window; "
            "%s computes each whole)", 100 * (1 - cost), exact)
    return IncrementalScorer(classifier, config.window_samples, hop)
