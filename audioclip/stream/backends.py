"""Build the classifier a stream runs: PyTorch (a release name or checkpoint path) or ONNX Runtime."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Sequence

from ..model.constants import FRAME_LENGTH, SAMPLE_RATE
from ..model.labels import ParameterError
from .config import StreamConfig
from .engine import Classifier

log = logging.getLogger(__name__)


def default_threads() -> int:
    """Intra-op threads for either backend: 2, never more than the cores.

    One thread is the steadier choice for ONNX Runtime beside other busy work (docs/streaming.md).
    """
    return max(1, min(2, os.cpu_count() or 1))


def load_classifier(*, checkpoint: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
                    labels: Sequence[str] | None = None, template: str | None = None,
                    threads: int | None = None) -> Classifier:
    """A classifier with ``labels`` and ``scores(waveform) -> (probs, similarities)``: a
    ZeroShotClassifier over ``checkpoint`` (a release name or a file; ``"full"`` when neither is
    given) on PyTorch, or the export in the folder ``onnx`` on ONNX Runtime (torch is not imported).

    ``labels=None`` uses the labels a fine-tuned checkpoint (or an ONNX export) carries.
    ``threads``: intra-op threads, :func:`default_threads` when None. Raises ``ValueError``
    (``CheckpointError``, :class:`~audioclip.model.labels.ParameterError` included), one line.
    """
    threads = default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ParameterError("threads", f"{{threads}}: must be a whole number at least 1, got {threads!r}")
    if onnx is not None and checkpoint is not None:
        raise ParameterError("onnx", "give {checkpoint} or {onnx}, not both")
    if onnx is not None:
        return _load_onnx(Path(onnx), labels, template, threads)
    checkpoint = "full" if checkpoint is None else checkpoint
    import torch

    from ..model import ZeroShotClassifier, check_labels, load_model

    torch.set_num_threads(threads)
    if labels is not None:
        labels = check_labels(labels)
    model = load_model(checkpoint)
    if labels is None and model.label_bank is None:
        raise ParameterError("labels", f"{checkpoint} carries no labels: pass {{labels}}")
    if labels is None and template is not None:
        raise ParameterError("template", "{template} applies to {labels}; this checkpoint's labels were embedded "
                                         f"with {model.label_bank.template!r}")
    classifier = ZeroShotClassifier(model, labels, template)
    log.info("PyTorch backend, %d thread(s), %d labels", threads, len(classifier.labels))
    return classifier


def _load_onnx(directory: Path, labels, template, threads: int) -> Classifier:
    try:
        from ..export.runtime import OnnxClassifier
    except ImportError as e:
        raise ValueError(f"the ONNX backend is not available in this installation ({e})") from e
    if labels is None:
        classifier = OnnxClassifier(directory, threads=threads)
        if template is not None and template != classifier.template:
            raise ParameterError("template", f"{{template}} applies to {{labels}}; {directory}'s labels were "
                                             f"embedded with {classifier.template!r}")
    else:  # new labels, embedded by the exported text encoder
        classifier = OnnxClassifier(directory, labels=labels, template=template, threads=threads)
    log.info("ONNX Runtime backend, %d thread(s), %d labels", threads, len(classifier.labels))
    return classifier


def native_window_samples(classifier: Classifier) -> int | None:
    """The window length ``classifier`` was made for: an ONNX export's fixed window, or the clip
    length a fine-tuned checkpoint was trained on; None for a zero-shot model (any length)."""
    fixed = getattr(classifier, "window_samples", None)
    if fixed is not None:
        return fixed
    model = getattr(classifier, "model", None)
    return getattr(getattr(model, "metadata", None), "clip_samples", None)


def shortest_window(classifier: Classifier) -> int:
    """The fewest samples ``classifier`` scores as it would a window: its native window
    (:func:`native_window_samples`) where it has one, else one FBSP frame (an input shorter than one
    window is padded only this far)."""
    native = native_window_samples(classifier)
    return native if native is not None else getattr(classifier, "min_samples", FRAME_LENGTH)


def fit_window(config: StreamConfig, classifier: Classifier, *, window_given: bool) -> StreamConfig:
    """``config`` with the classifier's own window (:func:`native_window_samples`) when none was
    given; a given window that differs from a fine-tuned head's clip length keeps, with a warning."""
    native = native_window_samples(classifier)
    if native is None or native == config.window_samples:
        return config
    seconds = round(native / SAMPLE_RATE, 4)
    if not window_given:
        log.info("window %g s: the length %s (pass a window to change it)", seconds,
                 "of this export" if getattr(classifier, "window_samples", None) else "this head was fine-tuned on")
        return dataclasses.replace(config, window=seconds)
    if getattr(classifier, "window_samples", None) is None:  # an export's fixed window refuses others itself
        log.warning("this head was fine-tuned on %g-s clips; windows of %g s may score worse: a window of %g s "
                    "matches it", seconds, config.window, seconds)
    return config
