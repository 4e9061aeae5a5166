"""Build the classifier a stream runs: PyTorch (a release name or checkpoint path) or ONNX Runtime."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ..model.labels import ParameterError
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
