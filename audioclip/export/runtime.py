"""Zero-shot labelling with exported graphs on ONNX Runtime: numpy only, no torch.

``OnnxClassifier`` has the interface of :class:`audioclip.model.ZeroShotClassifier` (``labels``,
``template``, ``logit_scale``, ``scores``, ``probs``, ``similarities``) and returns numpy arrays.
Import it as ``from audioclip.export.runtime import OnnxClassifier`` (or from ``audioclip.export``):
neither imports torch.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model.waveform import check_waveform

log = logging.getLogger(__name__)

CLASSIFIER_FILE = "classifier.onnx"
ENCODER_FILE = "audio_encoder.onnx"
TEXT_ENCODER_FILE = "text_encoder.onnx"


def tensorrt_name(name: str) -> str:
    """File of the TensorRT flavour of an int8 graph: ``audio_encoder.onnx`` -> ``audio_encoder.trt.onnx``."""
    return name.removesuffix(".onnx") + ".trt.onnx"


def _providers(requested: Sequence | None) -> list:
    """``requested`` providers (names, or ``(name, options)`` pairs), checked; by default the CPU's."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is not None:
        missing = [name for name in (p[0] if isinstance(p, tuple) else p for p in requested) if name not in available]
        if missing:
            raise ValueError(f"ONNX Runtime providers {', '.join(missing)} are not available here "
                             f"(available: {', '.join(available)})")
        return list(requested)
    return ["CPUExecutionProvider"]


def gpu_providers() -> list[str]:
    """``["CUDAExecutionProvider"]`` where the installed ONNX Runtime has it and an NVIDIA driver is loaded.

    onnxruntime-gpu lists its CUDA provider on any machine; where no GPU is present, creating a
    session with it prints a load error and falls back to the CPU, so it is not tried then.
    """
    import onnxruntime as ort

    if not Path("/proc/driver/nvidia").exists():
        return []
    return [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]


def session(path: str | os.PathLike, *, threads: int | None = None, providers: Sequence | None = None,
            runtime: str = "onnxruntime", precision: str = "fp32"):
    """An ONNX Runtime session on ``path`` with ``threads`` intra-op threads (None: ONNX Runtime's default).

    A file ONNX Runtime cannot load (truncated by an interrupted copy, not ONNX) raises a one-line
    ``ValueError`` that names it.

    ``providers``: names or ``(name, options)`` pairs, as ONNX Runtime takes them; by default the CPU.
    ``runtime="openvino"``: the graph compiled by OpenVINO at ``precision`` (``fp32``, ``bf16``) behind the
    same calls (:class:`~audioclip.export.openvino.OpenVinoSession`; no providers).
    """
    if runtime == "openvino":
        from .openvino import OpenVinoSession

        return OpenVinoSession(path, precision=precision, threads=threads)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle worker threads sleep instead of spinning: on a machine shared with other work (a live
    # stream beside its user), spinning threads steal the cores the next window needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # ONNX Runtime moves the int8 graph's QuantizeLinear nodes ahead of the max-pools, which then
    # run on uint8 in a slow generic kernel (docs/benchmarks.md); the pools stay fp32 without that
    # pass. fp32/fp16 graphs are unaffected.
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph, InvalidProtobuf, NoSuchFile

    try:
        return ort.InferenceSession(str(path), options, providers=_providers(providers),
                                    disabled_optimizers=["QDQPropagationTransformer"])
    except (InvalidProtobuf, InvalidGraph, NoSuchFile, Fail) as e:  # a truncated copy, a foreign or missing file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: ONNX Runtime cannot load this graph ({type(e).__name__}: {reason}); copy the "
                         f"export again or write it again with `audioclip-export onnx`") from e


def as_mono_batch(waveform, *, min_samples: int, window_samples: int | None) -> np.ndarray:
    """Validate a waveform and return it as C-contiguous float32 ``[B, T]`` in [-1, 1].

    Accepts numpy arrays (or anything ``np.asarray`` takes) shaped ``(T,)``, ``(B, T)`` or
    ``(B, 1, T)``, float in [-1, 1] or int16 (scaled by 1/32768). Several channels are refused:
    the exported graphs take mono input (average the channels first, or score each one).
    """
    waveform = check_waveform(waveform, min_samples=min_samples, needs="this graph takes")
    if waveform.shape[1] != 1:
        raise ValueError(f"waveform has {waveform.shape[1]} channels; the ONNX graphs take mono (B, T): average "
                         "the channels or score each one")
    if window_samples is not None and waveform.shape[-1] != window_samples:
        raise ValueError(f"waveform has {waveform.shape[-1]} samples but this graph takes exactly {window_samples} "
                         "(exported with a fixed window); cut or pad it, or export with --dynamic-length")
    waveform = waveform[:, 0]
    return waveform


def check_runtime(runtime: str, precision: str | None) -> str:
    """``precision`` for ``runtime`` (``None``: fp32), or a one-line ``ValueError``: ONNX Runtime runs each graph
    at the precision it was exported with; bf16 is OpenVINO's (and PyTorch's)."""
    from .openvino import PRECISIONS, RUNTIMES

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    precision = "fp32" if precision is None else precision
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if runtime == "onnxruntime" and precision != "fp32":
        raise ValueError(f"precision {precision}: ONNX Runtime runs the graphs at the precision they were exported "
                         f"with; {precision} is for --runtime openvino (or PyTorch, without --onnx)")
    return precision


class OnnxClassifier:
    """Scores audio against labels: those baked into ``DIR/classifier.onnx``, or new ones.

    ``probs = softmax(logit_scale * cosine)``, as :class:`audioclip.model.ZeroShotClassifier`
    computes it. Without ``labels`` it runs ``classifier.onnx``, whose labels, template and logit
    scale are read from the graph's metadata. With ``labels`` (and ``template``, ``"{}"`` by
    default, as for the PyTorch classifier) it embeds them once with ``text_encoder.onnx`` and the
    tokenizer, then runs ``audio_encoder.onnx``: new labels without torch.
    ``threads``: intra-op threads (None: ONNX Runtime's default of one per core).

    ``runtime="openvino"``, ``precision`` ``fp32`` or ``bf16``: the same graphs on OpenVINO, at a precision the
    export verified (:func:`~audioclip.export.openvino.verified_plan`). Whole windows then run through the
    incremental stage graphs where the export has them: the front end, the first stages in f32 as the export
    recorded, the rest at ``precision``. (OpenVINO compiles the whole graph's in-graph input scaling into
    another rounding, which the quiet bins of the dB front end amplify: 2.1e-3 from ONNX Runtime on the golden
    checkpoint, against 1.5e-4 through the stage graphs, whose input numpy scales as PyTorch does.)
    """

    def __init__(self, path: str | os.PathLike, *, labels: Sequence[str] | None = None, template: str | None = None,
                 threads: int | None = None, providers: Sequence | None = None, runtime: str = "onnxruntime",
                 precision: str | None = None):
        path = Path(path)
        self.runtime = runtime
        self.runtime_precision = check_runtime(runtime, precision)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such folder; pass a folder written by `audioclip-export onnx`")
        self.label_embeddings: np.ndarray | None = None  # [L, D], normalised; None: the classifier graph scores
        if labels is None:
            if template is not None:
                raise ValueError("a template applies to new labels: pass labels as well, or leave out the template")
            file = path / CLASSIFIER_FILE if path.is_dir() else path
        else:
            from ..model.labels import check_labels, check_template

            labels, template = check_labels(labels), check_template(template)
            file = (path if path.is_dir() else path.parent) / ENCODER_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no such file; pass a folder written by `audioclip-export onnx`")
        self.folder = file.parent
        self.threads, self.providers = threads, providers
        self._incremental = None
        self._fp32_stages: list[str] = []
        self._whole_encoders: dict[int, object] | None = None  # OpenVINO: whole windows through the stages
        if runtime == "openvino":
            from .incremental import TAIL_FILE
            from .openvino import verified_plan

            self._fp32_stages = verified_plan(self.folder, self.runtime_precision)
            if (self.folder / TAIL_FILE).is_file():
                self._whole_encoders = {}
                file = self.folder / TAIL_FILE
        self.session = (self.incremental_graphs().session(file.name) if self._whole_encoders is not None else
                        session(file, threads=threads, providers=providers, runtime=runtime,
                                precision=self.runtime_precision))
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.labels: list[str] = json.loads(meta["labels"])
            self.template: str = meta["template"]
            self.logit_scale = float(meta["logit_scale"])
            self.sample_rate = int(meta["sample_rate"])
            self.min_samples = int(meta["min_samples"])
            window = meta["window_samples"]
        except (KeyError, ValueError) as e:
            raise ValueError(f"{file}: not a graph written by audioclip-export (metadata {e} missing or bad)") from e
        self.window_samples = None if window == "dynamic" else int(window)
        self.precision = meta.get("precision", "fp32")
        self.input_name = self.session.get_inputs()[0].name
        if labels is not None:
            self.labels, self.template = labels, template
            self.label_embeddings = embed_labels(file.parent, labels, template, threads=threads, providers=providers,
                                                 runtime=runtime)
        log.info("loaded %s: %d labels, %s, window %s%s", file, len(self.labels), self.precision, window,
                 f", OpenVINO {self.runtime_precision}" + (f" ({', '.join(self._fp32_stages)} f32)"
                                                           if self._fp32_stages else "")
                 if runtime == "openvino" else "")

    def logits(self, waveform) -> np.ndarray:
        """Scaled cosine similarities ``[B, L]``."""
        return self._logits_probs(waveform)[0]

    def scores(self, waveform) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, similarities)``, both float32 ``[B, L]``, from one run of the graph."""
        logits, probs = self._logits_probs(waveform)
        return probs, logits / np.float32(self.logit_scale)

    def _logits_probs(self, waveform) -> tuple[np.ndarray, np.ndarray]:
        x = as_mono_batch(waveform, min_samples=self.min_samples, window_samples=self.window_samples)
        if self._whole_encoders is not None:
            outputs = [self._whole_window(row) for row in x]
            if self.label_embeddings is None:
                return (np.concatenate([o.logits for o in outputs]), np.concatenate([o.probs for o in outputs]))
            return self.logits_probs_of(np.concatenate([o.embedding for o in outputs]))
        if self.label_embeddings is None:
            logits, probs = self.session.run(["logits", "probs"], {self.input_name: x})
            return logits, probs
        return self.logits_probs_of(self.embed(x))

    def embed(self, waveform) -> np.ndarray:
        """Normalised audio embeddings ``[B, D]`` from the audio encoder (an instance made with ``labels``)."""
        if self.label_embeddings is None:
            raise ValueError("this classifier runs classifier.onnx, which gives no embeddings: pass labels")
        x = as_mono_batch(waveform, min_samples=self.min_samples, window_samples=self.window_samples)
        if self._whole_encoders is not None:
            return np.concatenate([self._whole_window(row).embedding for row in x])
        (embedding,) = self.session.run(["embedding"], {self.input_name: x})
        return embedding

    def _whole_window(self, row: np.ndarray):
        """One window computed whole through the stage graphs (:class:`~audioclip.export.incremental.TailOutput`)."""
        from .incremental import OnnxIncrementalEncoder

        encoder = self._whole_encoders.get(len(row))
        if encoder is None:
            encoder = self._whole_encoders[len(row)] = OnnxIncrementalEncoder(self.incremental_graphs(), len(row))
        encoder.reset()
        return encoder.encode(row, 0)

    def logits_probs_of(self, embedding: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, probs)`` of normalised embeddings against the new labels."""
        logits = (embedding @ self.label_embeddings.T) * np.float32(self.logit_scale)
        e = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return logits, e / e.sum(axis=-1, keepdims=True)

    def incremental_graphs(self):
        """The export's incremental graphs (:class:`~audioclip.export.incremental.IncrementalGraphs`), loaded
        on first use and shared by every stream of this classifier; ``ValueError`` when the export has none."""
        if self._incremental is None:
            from .incremental import IncrementalGraphs

            self._incremental = IncrementalGraphs(self.folder, threads=self.threads, providers=self.providers,
                                                  runtime=self.runtime, precision=self.runtime_precision,
                                                  fp32_stages=self._fp32_stages)
        return self._incremental

    def scores_of_tail(self, output) -> tuple[np.ndarray, np.ndarray]:
        """``(probs, similarities)`` of a window from what the incremental tail graph gave for it
        (:class:`~audioclip.export.incremental.TailOutput`): its scores of the exported labels, or its
        embedding against new ones."""
        if self.label_embeddings is None:
            logits, probs = output.logits, output.probs
        else:
            logits, probs = self.logits_probs_of(output.embedding)
        return probs, logits / np.float32(self.logit_scale)

    def probs(self, waveform) -> np.ndarray:
        """Label probabilities ``[B, L]``."""
        return self.scores(waveform)[0]

    def similarities(self, waveform) -> np.ndarray:
        """Cosine similarities ``[B, L]`` between the audio and each label."""
        return self.scores(waveform)[1]


def embed_labels(directory: str | os.PathLike, labels: Sequence[str], template: str = "{}", *,
                 threads: int | None = None, providers: Sequence | None = None,
                 runtime: str = "onnxruntime") -> np.ndarray:
    """Normalised embeddings ``[L, D]`` of ``template.format(label)`` from ``DIR/text_encoder.onnx``, without torch.

    ``runtime="openvino"``: on OpenVINO, in f32 at every precision (labels are embedded once; the export
    verifies the text graph in f32 only)."""
    from ..model.tokenizer import token_ids

    file = Path(directory) / TEXT_ENCODER_FILE
    if not file.is_file():
        raise ValueError(f"{directory} has no {TEXT_ENCODER_FILE} (exported from a fine-tuned audio head, which has no "
                         "text tower): it scores only the labels it was exported with; leave out the labels")
    tokens = token_ids([template.format(label) for label in labels])
    (embeddings,) = session(file, threads=threads, providers=providers, runtime=runtime).run(["embedding"],
                                                                                            {"tokens": tokens})
    return embeddings
