"""Build the classifier a stream runs: PyTorch (a release name or checkpoint path) or ONNX Runtime."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from .engine import Classifier

log = logging.getLogger(__name__)


def default_threads() -> int:
    """Intra-op threads for either backend: 2, never more than the cores.

    benchmarks/stream.py on the 2-core machine, golden checkpoint, 0.25 s hop, p95 latency idle /
    beside a process that keeps one core busy: PyTorch 2 threads 132 / 208 ms (1 thread: 313 /
    1105 ms at a 0.5 s hop, with drops); ONNX Runtime (worker threads sleep, no spinning)
    2 threads 91 / 171 ms, 1 thread 148 / 149 ms. Under steady contention ``--threads 1`` is the
    steadier choice for ONNX Runtime.
    """
    return max(1, min(2, os.cpu_count() or 1))


def load_classifier(*, checkpoint: str | os.PathLike = "full", onnx: str | os.PathLike | None = None,
                    labels: Sequence[str] | None = None, template: str | None = None,
                    threads: int | None = None) -> Classifier:
    """A ZeroShotClassifier over ``checkpoint``, or the exported classifier in ``onnx``.

    ``labels=None`` uses the labels a fine-tuned checkpoint (or an ONNX export) carries.
    Raises ``ValueError`` (``CheckpointError`` included) with a one-line message.
    """
    threads = default_threads() if threads is None else threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if onnx is not None:
        return _load_onnx(Path(onnx), labels, template, threads)
    import torch

    from ..model import ZeroShotClassifier, check_labels, load_model

    torch.set_num_threads(threads)
    if labels is not None:
        labels = check_labels(labels)
    model = load_model(checkpoint)
    if labels is None and model.label_bank is None:
        raise ValueError(f"{checkpoint} carries no labels: pass --labels or --labels-file")
    if labels is None and template is not None:
        raise ValueError("--template applies to --labels; this checkpoint's labels were embedded with "
                         f"{model.label_bank.template!r}")
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
            raise ValueError(f"--template applies to --labels; {directory}'s labels were embedded with "
                             f"{classifier.template!r}")
    else:  # new labels, embedded by the exported text encoder
        classifier = OnnxClassifier(directory, labels=labels, template=template, threads=threads)
    log.info("ONNX Runtime backend, %d thread(s), %d labels", threads, len(classifier.labels))
    return classifier
