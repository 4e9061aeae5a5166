"""Check exported graphs on ONNX Runtime against the PyTorch model, with the bounds an export must meet.

Bounds (on L2-normalised embeddings, per check input):

- fp32: max |ONNX - PyTorch| <= 1e-4, or, where PyTorch's own float32 front end is farther than
  that from exact arithmetic, <= 2x that distance ("noise"). Quiet FBSP bins (below -100 dB)
  come out of a float32 matrix product with rounding noise whose size depends on the summation
  order; on real clips this moves PyTorch's embeddings by up to 1.4e-4 from the exact result, so
  no other summation order can promise 1e-4 to PyTorch there. The noise is measured per input by
  running the same front end in float64.
- fp16: cosine >= 0.999.
- int8: cosine >= 0.99 and the same top-1 label as PyTorch, unless PyTorch's two labels are tied
  (within ``TOP1_TIE_LOGITS``).
- bf16 (OpenVINO's ``INFERENCE_PRECISION_HINT``): cosine >= 0.99 and the same top-1, as int8: bf16 keeps
  8 bits of mantissa, about int8's resolution.
- OpenVINO f32: the fp32 bound.
- every precision: ``classifier.onnx``'s probabilities within 1e-4 of PyTorch's head (labels,
  logit scale, softmax) applied to ``audio_encoder.onnx``'s embeddings (bf16: within 0.02, its label
  scores are computed in bf16 too).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..audio import AUDIO_EXTENSIONS, load_audio
from ..model import SAMPLE_RATE, ZeroShotClassifier
from ..model.esresnext import to_reference_scale
from ..model.fbsp import power_spectrogram, power_to_db
from .runtime import session, tensorrt_name

log = logging.getLogger(__name__)

FP32_MAX_DIFF = 1e-4
HEAD_MAX_DIFF = 1e-4
FP16_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.99
BF16_MIN_COSINE = 0.99
BF16_HEAD_MAX_DIFF = 0.02
"""bf16 computes the label scores in bf16 as well: the logit scale (up to 100) turns its rounding of the
cosines into probabilities up to about 1e-2 from PyTorch's head on the same embeddings (tiny model: 6e-3)."""
TOP1_TIE_LOGITS = 0.05
"""A top-1 disagreement is a tie when PyTorch ranks the two labels within this many logits (0.05 of
a scale up to 100: cosines 5e-4 apart), as on a random checkpoint where all labels score alike."""


@dataclass
class Check:
    """One row of the verification table."""

    graph: str
    precision: str
    inputs: str
    shape: tuple[int, ...]
    max_abs_diff: float
    min_cosine: float
    top1_agree: str
    bound: str
    passed: bool
    ms: float


def load_clips(paths: Sequence[str | Path]) -> list[tuple[str, np.ndarray]]:
    """Mono float32 waveforms at 44.1 kHz (:func:`audioclip.audio.load_audio`) from audio files or folders of them.

    Files of a folder are taken in name order; an unreadable file raises ``AudioFileError`` (a ``ValueError``).
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in AUDIO_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise ValueError(f"{p}: no such audio file or folder")
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {', '.join(map(str, paths))}")
    return [(f.stem, load_audio(f)) for f in files]


def synthetic_clips(seconds: float = 5.0, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Deterministic check signals when no recordings are given: noise, a chirp, a tone burst."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    rng = np.random.default_rng(seed)
    brown = np.cumsum(rng.standard_normal(n))
    brown = 0.5 * (brown - brown.mean()) / np.abs(brown - brown.mean()).max()
    chirp = 0.4 * np.sin(2 * np.pi * (100 * t + (8000 - 100) / (2 * seconds) * t ** 2))
    burst = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0) + 0.01 * rng.standard_normal(n)
    return [(name, x.astype(np.float32)) for name, x in
            (("noise", 0.3 * rng.standard_normal(n).clip(-3, 3)), ("brown", brown), ("chirp", chirp), ("burst", burst))]


def fit(audio: np.ndarray, samples: int) -> np.ndarray:
    """``audio`` repeated or cut to ``samples`` samples."""
    return np.resize(audio, samples).astype(np.float32)


def exact_front_end_embeddings(model, waveforms: np.ndarray) -> np.ndarray:
    """Normalised embeddings with the front end run in float64 (the same float32 weights), trunk float32."""
    audio = model.audio
    with torch.no_grad():
        x = to_reference_scale(torch.from_numpy(waveforms)).double()
        kernel = audio.fbsp_kernel().double()
        db = power_to_db(power_spectrogram(x, kernel, audio.window.double())).float()
        emb = audio.fc(audio.pool(audio.features(db)))
        return torch.nn.functional.normalize(emb, dim=-1).numpy()


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _timed_run(sess, feeds: dict) -> tuple[list[np.ndarray], float]:
    start = time.perf_counter()
    out = sess.run(None, feeds)
    return out, (time.perf_counter() - start) * 1000


def check_audio(*, graph_dir: Path, precision: str, classifier: ZeroShotClassifier,
                batches: Sequence[tuple[str, np.ndarray]], threads: int = 2, tensorrt: bool = False,
                provider: str = "CPUExecutionProvider", references: dict | None = None) -> list[Check]:
    """Run ``audio_encoder.onnx`` and ``classifier.onnx`` (``tensorrt``: their ``.trt.onnx`` int8
    flavour) on each batch with ONNX Runtime's ``provider`` and compare with PyTorch.

    Returns no checks when ``provider`` fails to load (ONNX Runtime then falls back to the CPU,
    which the CPU checks cover)."""
    encoder_file, clf_file = (tensorrt_name(f) if tensorrt else f for f in ("audio_encoder.onnx", "classifier.onnx"))
    providers = [provider]
    if provider == "CUDAExecutionProvider":  # TF32 convolutions would be judged, not the graph's float32
        providers = [(provider, {"use_tf32": "0"}), "CPUExecutionProvider"]
    encoder = session(graph_dir / encoder_file, threads=threads, providers=providers)
    if encoder.get_providers()[0] != provider:
        log.warning("ONNX Runtime's %s did not load: the graphs are verified on the CPU only", provider)
        return []
    clf = session(graph_dir / clf_file, threads=threads, providers=providers)
    graph = "audio_encoder+classifier" + (" .trt" if tensorrt else "")
    if provider != "CPUExecutionProvider":
        graph += f" [{provider.removesuffix('ExecutionProvider')}]"
    checks = []
    for name, x in batches:
        (emb,), ms = _timed_run(encoder, {"waveform": x})
        logits, probs = clf.run(None, {"waveform": x})
        checks.append(_judge(classifier, precision, graph, name, x, emb, probs, ms, references))
    return checks


def _reference(classifier: ZeroShotClassifier, precision: str, name: str, x: np.ndarray,
               references: dict | None) -> tuple[np.ndarray, np.ndarray, float]:
    """PyTorch's embeddings and probabilities of ``x`` and (fp32) its front end's float32 noise, kept in
    ``references`` under the input's name: the graphs of every provider and flavour are judged on the same."""
    key = (name, x.shape)
    if references is not None and key in references:
        return references[key]
    with torch.inference_mode():
        ref_t = classifier.embed(x)
        ref = ref_t.numpy()  # PyTorch's probabilities from the same pass (a standalone head's: a second one)
        ref_probs = (classifier.probs(x) if classifier.linear is not None else classifier.scores_of(ref_t)[0]).numpy()
    noise = float(np.abs(exact_front_end_embeddings(classifier.model, x) - ref).max()) if precision == "fp32" else 0.0
    if references is not None:
        references[key] = ref, ref_probs, noise
    return ref, ref_probs, noise


def _judge(classifier: ZeroShotClassifier, precision: str, graph: str, name: str, x: np.ndarray, emb: np.ndarray,
           probs: np.ndarray, ms: float, references: dict | None = None) -> Check:
    """One check: ONNX Runtime's embeddings ``emb`` and probabilities ``probs`` of waveforms ``x`` against PyTorch's,
    with the bound of ``precision`` (the module's docstring)."""
    ref, ref_probs, noise = _reference(classifier, precision, name, x, references)
    diff = float(np.abs(emb - ref).max())
    cos = float(_cosine(emb, ref).min())
    ref_logits = np.log(np.maximum(ref_probs, 1e-30))
    pick = probs.argmax(-1)
    gap = ref_logits.max(-1) - ref_logits[np.arange(len(x)), pick]  # PyTorch's margin over the ONNX pick
    agree = int((gap == 0).sum())
    ties = int(((gap > 0) & (gap < TOP1_TIE_LOGITS)).sum())
    if precision == "fp32":
        limit = max(FP32_MAX_DIFF, 2 * noise)
        bound = f"diff <= {limit:.2g}" + (f" (2 x noise {noise:.2g})" if limit > FP32_MAX_DIFF else "")
        passed = diff <= limit
    elif precision == "fp16":
        bound, passed = f"cos >= {FP16_MIN_COSINE}", cos >= FP16_MIN_COSINE
    elif precision == "bf16":
        bound = f"cos >= {BF16_MIN_COSINE}, same top-1"
        passed = cos >= BF16_MIN_COSINE and agree + ties == len(x)
    else:
        bound = f"cos >= {INT8_MIN_COSINE}, same top-1"
        passed = cos >= INT8_MIN_COSINE and agree + ties == len(x)
    # the classifier graph: its probabilities are the PyTorch head's on the encoder graph's
    # embeddings (compared with PyTorch's own probabilities, the logit scale of up to 100
    # amplifies the front end's rounding noise past any fixed bound: 1.6e-3 on a 1-s chirp whose
    # embeddings were within their bound)
    if classifier.linear is None:
        with torch.inference_mode():
            head_probs = classifier.scores_of(torch.from_numpy(emb))[0].numpy()
    else:  # a standalone head reads pooled features, not the embedding: fp32 against PyTorch's probabilities,
        head_probs = ref_probs if precision == "fp32" else probs  # fp16/int8 by embedding and top-1 only
    head_diff = float(np.abs(probs - head_probs).max())
    if head_diff > (BF16_HEAD_MAX_DIFF if precision == "bf16" else HEAD_MAX_DIFF):
        bound, passed = bound + f"; classifier head off by {head_diff:.2g}", False
    top1 = f"{agree}/{len(x)}" + (f" +{ties} tie" if ties else "")
    log.info("check %s %s %s %s: max|diff| %.3g, cos %.6f, top-1 %d/%d, %s", graph, precision, name, x.shape, diff,
             cos, agree, len(x), "ok" if passed else "FAILED")
    return Check(graph, precision, name, tuple(x.shape), diff, cos, top1, bound, passed, ms)


INCREMENTAL_HOP_STRIDES = 5
"""The verified stream's hop, in layer2 columns (0.50884 s, the stream's default hop)."""


def check_incremental(*, graph_dir: Path, precision: str, classifier: ZeroShotClassifier,
                      clips: Sequence[tuple[str, np.ndarray]], window_samples: int, threads: int = 2,
                      tensorrt: bool = False, provider: str = "CPUExecutionProvider",
                      references: dict | None = None, runtime: str = "onnxruntime", runtime_precision: str = "fp32",
                      fp32_stages: Sequence[str] = ()) -> list[Check]:
    """The incremental graphs over the check clips played one after another, at the stream's default hop,
    against PyTorch on each whole window, with the whole-window graphs' bounds (``precision``'s).

    ``runtime``, ``runtime_precision``, ``fp32_stages``: as :class:`~audioclip.export.incremental.IncrementalGraphs`
    takes them (OpenVINO's rows are named by :func:`openvino_graph_name`).

    One check covers every window of the stream (the first computed whole, the others from the
    previous window's columns; a window too short to share columns at that hop: all whole); a
    window that did not take the path it should fails it. (Other hops are the tests' business:
    each costs as much again here, on the full-size head a minute or more.)
    """
    from ..model.constants import STRIDE_SAMPLES
    from .incremental import IncrementalGraphs, OnnxIncrementalEncoder

    providers = [provider]
    if provider == "CUDAExecutionProvider":
        providers = [(provider, {"use_tf32": "0"}), "CPUExecutionProvider"]
    graphs = IncrementalGraphs(graph_dir, threads=threads, providers=None if runtime == "openvino" else providers,
                               tensorrt=tensorrt, runtime=runtime, precision=runtime_precision,
                               fp32_stages=fp32_stages)
    stream = np.concatenate([fit(a, max(len(a), window_samples)) for _, a in clips])
    graph = "incremental" + (" .trt" if tensorrt else "")
    if runtime == "openvino":
        graph = openvino_graph_name(graph, runtime_precision, fp32_stages)
    elif provider != "CPUExecutionProvider":
        graph += f" [{provider.removesuffix('ExecutionProvider')}]"
    checks = []
    for strides in (INCREMENTAL_HOP_STRIDES,):
        hop = strides * STRIDE_SAMPLES
        encoder = OnnxIncrementalEncoder(graphs, window_samples, hop_samples=hop)
        shares = encoder.cost(strides) < 1.0  # a short window shares nothing: its windows are computed whole
        starts = range(0, len(stream) - window_samples + 1, hop)
        windows = np.stack([stream[s:s + window_samples] for s in starts])
        outputs, ms = [], 0.0
        for start, window in zip(starts, windows):
            t0 = time.perf_counter()
            outputs.append(encoder.encode(window, start))
            ms += (time.perf_counter() - t0) * 1000
        emb = np.concatenate([o.embedding for o in outputs])
        probs = np.concatenate([o.probs for o in outputs])
        name = f"stream {len(stream) / SAMPLE_RATE:.1f}s hop {hop / SAMPLE_RATE:.4g}s"
        check = _judge(classifier, precision, graph, name, windows, emb, probs, ms / len(windows), references)
        if encoder.incremental_windows != (len(windows) - 1 if shares else 0):
            check.bound += f"; {encoder.incremental_windows} of {len(windows) - 1} windows shared columns"
            check.passed = False
        checks.append(check)
    return checks


def check_text(*, graph_dir: Path, model, labels: Sequence[str], template: str, threads: int = 2,
               runtime: str = "onnxruntime") -> Check:
    """Run ``text_encoder.onnx`` on the labels' tokens and compare with PyTorch (fp32 bound); ``runtime="openvino"``:
    on OpenVINO in f32 (the text graph runs in f32 at every precision)."""
    from ..model import tokenize

    tokens = tokenize([template.format(label) for label in labels])
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.encode_tokens(tokens), dim=-1).numpy()
    (emb,), ms = _timed_run(session(graph_dir / "text_encoder.onnx", threads=threads, runtime=runtime),
                            {"tokens": tokens.numpy()})
    diff = float(np.abs(emb - ref).max())
    graph = "text_encoder" if runtime == "onnxruntime" else openvino_graph_name("text_encoder", "fp32", ())
    return Check(graph, "fp32", "labels", tuple(tokens.shape), diff, float(_cosine(emb, ref).min()), "-",
                 f"diff <= {FP32_MAX_DIFF:g}", diff <= FP32_MAX_DIFF, ms)


def openvino_graph_name(graph: str, precision: str, fp32_stages: Sequence[str]) -> str:
    """A verification row's graph on OpenVINO: ``incremental [OpenVINO bf16; front, stem f32]``."""
    split = f"; {', '.join(fp32_stages)} f32" if fp32_stages else ""
    return f"{graph} [OpenVINO {precision}{split}]"


def check_openvino_whole(*, graph_dir: Path, precision: str, classifier: ZeroShotClassifier,
                         batches: Sequence[tuple[str, np.ndarray]], threads: int = 2, fp32_stages: Sequence[str] = (),
                         references: dict | None = None) -> list[Check]:
    """Whole windows on OpenVINO at ``precision`` as :class:`~audioclip.export.runtime.OnnxClassifier` runs them:
    through the stage graphs where the export has them (``fp32_stages`` in f32), else ``audio_encoder.onnx`` and
    ``classifier.onnx``; each batch against PyTorch with ``precision``'s bound."""
    from .incremental import TAIL_FILE, IncrementalGraphs, OnnxIncrementalEncoder

    checks = []
    if (graph_dir / TAIL_FILE).is_file():
        graphs = IncrementalGraphs(graph_dir, threads=threads, runtime="openvino", precision=precision,
                                   fp32_stages=fp32_stages)
        graph = openvino_graph_name("whole windows (stage graphs)", precision, fp32_stages)
        encoders: dict[int, OnnxIncrementalEncoder] = {}
        for name, x in batches:
            t0 = time.perf_counter()
            outputs = []
            for row in x:
                if len(row) not in encoders:
                    encoders[len(row)] = OnnxIncrementalEncoder(graphs, len(row))
                encoder = encoders[len(row)]
                encoder.reset()
                outputs.append(encoder.encode(row, 0))
            ms = (time.perf_counter() - t0) * 1000
            emb = np.concatenate([o.embedding for o in outputs])
            probs = np.concatenate([o.probs for o in outputs])
            checks.append(_judge(classifier, precision, graph, name, x, emb, probs, ms, references))
        return checks
    encoder = session(graph_dir / "audio_encoder.onnx", threads=threads, runtime="openvino", precision=precision)
    clf = session(graph_dir / "classifier.onnx", threads=threads, runtime="openvino", precision=precision)
    graph = openvino_graph_name("audio_encoder+classifier", precision, ())
    for name, x in batches:
        (emb,), ms = _timed_run(encoder, {"waveform": x})
        logits, probs = clf.run(None, {"waveform": x})
        checks.append(_judge(classifier, precision, graph, name, x, emb, probs, ms, references))
    return checks


BF16_SPLITS = ((), ("front",), ("front", "stem"), ("front", "stem", "layer1"), ("front", "stem", "layer1", "layer2"))
"""The stages kept in f32 that bf16 tries, in order: the whole trunk in bf16 first, then ever longer f32 heads
(the stage graphs are the places where the precision can change)."""


def check_openvino(*, graph_dir: Path, classifier: ZeroShotClassifier, batches: Sequence[tuple[str, np.ndarray]],
                   clips: Sequence[tuple[str, np.ndarray]], window_samples: int, threads: int = 2,
                   references: dict | None = None, text: tuple[Sequence[str], str] | None = None,
                   precisions: Sequence[str] = ("fp32", "bf16")) -> tuple[list[Check], dict]:
    """Verify the export on OpenVINO: ``(checks, record)``, the record as
    :func:`~audioclip.export.openvino.write_record` writes it.

    fp32: whole windows, the incremental stream and (``text``: labels and template) the text graph, with the
    fp32 bounds. bf16, on a CPU with native bf16 only (elsewhere OpenVINO computes f32: the record says why
    not): each split of :data:`BF16_SPLITS` in turn, whole windows one check input at a time, then the
    stream, until one keeps the bf16 bound; of the splits that failed, the failing row is kept. A precision
    that fails is left out of the record, with the reason; the export goes on.
    """
    from .openvino import cpu_description, import_openvino, no_native_bf16, without_disk_cache

    ov = import_openvino()
    with without_disk_cache():
        return _check_openvino(ov, graph_dir=graph_dir, classifier=classifier, batches=batches, clips=clips,
                               window_samples=window_samples, threads=threads, references=references, text=text,
                               precisions=precisions, cpu=cpu_description(), no_bf16=no_native_bf16())


def _check_openvino(ov, *, graph_dir: Path, classifier: ZeroShotClassifier, batches, clips, window_samples: int,
                    threads: int, references: dict | None, text, precisions: Sequence[str], cpu: str,
                    no_bf16: str | None) -> tuple[list[Check], dict]:
    from .incremental import TAIL_FILE

    record: dict = {"openvino": ov.__version__, "cpu": cpu, "precisions": {}, "not_verified": {}}
    stages = (graph_dir / TAIL_FILE).is_file()
    checks: list[Check] = []

    def rows(precision: str, split: Sequence[str]) -> list[Check]:
        """The checks of one precision and split, up to the first that fails: whole windows one check input
        at a time (a split that fails mostly fails on the first), then the stream."""
        found: list[Check] = []
        for batch in batches:
            found += check_openvino_whole(graph_dir=graph_dir, precision=precision, classifier=classifier,
                                          batches=[batch], threads=threads, fp32_stages=split, references=references)
            if not found[-1].passed:
                return found
        if stages:
            found += check_incremental(graph_dir=graph_dir, precision=precision, classifier=classifier, clips=clips,
                                       window_samples=window_samples, threads=threads, references=references,
                                       runtime="openvino", runtime_precision=precision, fp32_stages=split)
        return found

    for precision in precisions:
        if precision == "bf16" and no_bf16:
            record["not_verified"]["bf16"] = no_bf16
            log.warning("OpenVINO bf16 not verified: %s", no_bf16)
            continue
        splits = BF16_SPLITS if precision == "bf16" and stages else ((),)
        for split in splits:
            found = rows(precision, split)
            if precision == "fp32" and text is not None:
                found.append(check_text(graph_dir=graph_dir, model=classifier.model, labels=text[0],
                                        template=text[1], threads=threads, runtime="openvino"))
            failed = [c for c in found if not c.passed]
            if not failed:
                checks += found
                record["precisions"][precision] = {"fp32_stages": list(split)}
                log.info("OpenVINO %s verified%s", precision, f" ({', '.join(split)} in f32)" if split else "")
                break
            checks += failed[:1]
            c = failed[0]
            record["not_verified"][precision] = (f"{c.graph} on {c.inputs}: cosine {c.min_cosine:.4f}, max|diff| "
                                                 f"{c.max_abs_diff:.2g}, top-1 {c.top1_agree} (bound {c.bound})")
        if precision in record["precisions"]:
            record["not_verified"].pop(precision, None)
        else:
            log.warning("OpenVINO %s not verified for this export: %s", precision, record["not_verified"][precision])
    return checks, record
