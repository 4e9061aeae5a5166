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


def check_backend(*, onnx, runtime: str | None, precision: str | None) -> tuple[str, str]:
    """``(runtime, precision)`` with their defaults (ONNX Runtime, fp32), or a one-line
    :class:`~audioclip.model.labels.ParameterError`: OpenVINO runs an export (``onnx``); ONNX Runtime runs
    each graph at its exported precision, so ``bf16`` is OpenVINO's or PyTorch's."""
    from ..export.openvino import PRECISIONS, RUNTIMES

    runtime = "onnxruntime" if runtime is None else runtime
    precision = "fp32" if precision is None else precision
    if runtime not in RUNTIMES:
        raise ParameterError("runtime", f"{{runtime}} {runtime!r}: use {' or '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise ParameterError("precision", f"{{precision}} {precision!r}: use {' or '.join(PRECISIONS)}")
    if onnx is None and runtime != "onnxruntime":
        raise ParameterError("runtime", f"{{runtime}} {runtime} runs an export: pass {{onnx}} DIR (written by "
                                        "`audioclip-export onnx`)")
    if onnx is not None and runtime == "onnxruntime" and precision != "fp32":
        raise ParameterError("precision", f"{{precision}} {precision}: ONNX Runtime runs the graphs at the precision "
                                          f"they were exported with; use {{runtime}} openvino for {precision}")
    return runtime, precision


def load_classifier(*, checkpoint: str | os.PathLike | None = None, onnx: str | os.PathLike | None = None,
                    labels: Sequence[str] | None = None, template: str | None = None,
                    threads: int | None = None, runtime: str | None = None,
                    precision: str | None = None) -> Classifier:
    """A classifier with ``labels`` and ``scores(waveform) -> (probs, similarities)``: a
    ZeroShotClassifier over ``checkpoint`` (a release name or a file; ``"full"`` when neither is
    given) on PyTorch, or the export in the folder ``onnx`` on ONNX Runtime (torch is not imported).

    ``labels=None`` uses the labels a fine-tuned checkpoint (or an ONNX export) carries.
    ``threads``: intra-op threads, :func:`default_threads` when None. ``runtime``: ``onnxruntime`` (default)
    or ``openvino`` for an export; ``precision``: ``fp32`` (default) or ``bf16`` (OpenVINO, at a precision the
    export verified; PyTorch through ``torch.autocast``, checked at load by :func:`check_torch_bf16`).
    Raises ``ValueError`` (``CheckpointError``, :class:`~audioclip.model.labels.ParameterError` included), one line.
    """
    threads = default_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ParameterError("threads", f"{{threads}}: must be a whole number at least 1, got {threads!r}")
    if onnx is not None and checkpoint is not None:
        raise ParameterError("onnx", "give {checkpoint} or {onnx}, not both")
    runtime, precision = check_backend(onnx=onnx, runtime=runtime, precision=precision)
    if onnx is not None:
        return _load_onnx(Path(onnx), labels, template, threads, runtime, precision)
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
    classifier = ZeroShotClassifier(model, labels, template, precision=precision)
    if precision == "bf16":
        check_torch_bf16(classifier)
    log.info("PyTorch backend, %d thread(s), %d labels, %s", threads, len(classifier.labels), precision)
    return classifier


def _load_onnx(directory: Path, labels, template, threads: int, runtime: str = "onnxruntime",
               precision: str = "fp32") -> Classifier:
    try:
        from ..export.runtime import OnnxClassifier
    except ImportError as e:
        raise ValueError(f"the ONNX backend is not available in this installation ({e})") from e
    if labels is None:
        classifier = OnnxClassifier(directory, threads=threads, runtime=runtime, precision=precision)
        if template is not None and template != classifier.template:
            raise ParameterError("template", f"{{template}} applies to {{labels}}; {directory}'s labels were "
                                             f"embedded with {classifier.template!r}")
    else:  # new labels, embedded by the exported text encoder
        classifier = OnnxClassifier(directory, labels=labels, template=template, threads=threads, runtime=runtime,
                                    precision=precision)
    log.info("%s backend, %d thread(s), %d labels%s", "OpenVINO" if runtime == "openvino" else "ONNX Runtime",
             threads, len(classifier.labels), f", {precision}" if runtime == "openvino" else "")
    return classifier


TORCH_BF16_MIN_COSINE = 0.99
"""PyTorch bf16 (autocast) against fp32 at load: the export's bf16 bound (cosine, and the same top-1 label)."""


def check_torch_bf16(classifier) -> None:
    """Refuse PyTorch bf16 for a checkpoint it does not keep: the deterministic check signals of
    :func:`audioclip.export.verify.synthetic_clips` (noise, brown noise, a chirp, a tone burst; a checkpoint
    carries no recordings) at the classifier's window, once in fp32 and once under autocast, must keep
    cosine >= 0.99 and the same top-1 label (a tie within 0.05 logits counts), as OpenVINO's bf16 at export.
    Costs four windows twice at load (about a second on the full head). One-line ``ValueError`` otherwise."""
    import numpy as np
    import torch

    from ..export.verify import TOP1_TIE_LOGITS, synthetic_clips

    window = native_window_samples(classifier) or 5 * SAMPLE_RATE
    clips = synthetic_clips(window / SAMPLE_RATE)
    x = np.stack([np.resize(a, window) for _, a in clips]).astype(np.float32)

    def run(precision: str) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities and what the cosine is taken on: embeddings (a standalone head: its logits)."""
        asked, classifier.precision = classifier.precision, precision
        try:
            with torch.inference_mode():
                probs, sims = classifier.scores(x)
                out = sims if classifier.linear is not None else classifier.embed(x)
        finally:
            classifier.precision = asked
        return probs.float().numpy(), out.float().numpy()

    (ref_probs, ref), (probs, out) = run("fp32"), run("bf16")
    cos = (ref * out).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(out, axis=-1))
    ref_logits = np.log(np.maximum(ref_probs, 1e-30))
    gap = ref_logits.max(-1) - ref_logits[np.arange(len(x)), probs.argmax(-1)]  # fp32's margin over bf16's pick
    worst = int(cos.argmin())
    if cos[worst] < TORCH_BF16_MIN_COSINE or (gap >= TOP1_TIE_LOGITS).any():
        raise ValueError(f"--precision bf16: this checkpoint loses too much in PyTorch bf16 (cosine {cos[worst]:.4f} "
                         f"to fp32 on the {clips[worst][0]} check signal, top-1 kept on "
                         f"{int((gap < TOP1_TIE_LOGITS).sum())} of {len(x)}; the bound is cosine "
                         f"{TORCH_BF16_MIN_COSINE} and the same top-1): use --precision fp32")
    log.info("PyTorch bf16 checked against fp32 on %d check signals: worst cosine %.5f", len(x), cos.min())


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
