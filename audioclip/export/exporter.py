"""``export_onnx``: a checkpoint -> a folder of verified ONNX graphs, labels, metadata and trtexec lines.

The folder is built in a temporary sibling and renamed into place only when every graph has been
checked against PyTorch: a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import torch

from .. import __version__
from ..model import SAMPLE_RATE, ZeroShotClassifier, check_labels, load_model
from ..model.background import torch_bank, write_export_bank
from ..model.checkpoint import source_info
from ..model.constants import CONTEXT_LENGTH
from ..model.labels import ParameterError, check_template
from ..model.labels import window_samples as check_window
from . import precision as prec
from .graphs import AudioEncoderGraph, ClassifierGraph, TextEncoderGraph
from .incremental import TAIL_FILE
from .openvino import RECORD_FILE as OPENVINO_RECORD
from .report import readme_text, tensorrt_files, trtexec_lines
from .runtime import gpu_providers
from .shared import SHARED_WEIGHTS_FILE, share_weights
from .stages import stage_shapes, write_stage_graphs
from .trt_check import tensorrt_problems
from .verify import (
    Check,
    check_audio,
    check_incremental,
    check_openvino,
    check_text,
    fit,
    load_clips,
    synthetic_clips,
)
from .writing import ExportError, describe_blocks, export_fp32, export_graph, set_metadata, write_at_precision

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
MIN_OPSET = 18  # torch's exporter writes 18 at the least: asked for 17, it kept 18 (its converter fails on Pad)
MAX_OPSET = 23
MAX_BATCH = 64
TRT_MAX_BATCH = 16
"""Largest batch of the TensorRT profiles in ``trtexec.txt``: TensorRT reserves memory for the
largest shape, and 16 windows of 60 s already hold 42 M samples; the ONNX graphs take up to MAX_BATCH."""
MAX_SECONDS = 600
DYNAMIC_MIN_SAMPLES = 10070
"""Shortest input of a ``--dynamic-length`` graph (0.228 s): below it layer4's width is 1, which
broadcasts differently, and ``torch.export`` refuses to cover both cases with one graph."""


@dataclass
class ExportResult:
    out: Path
    files: list[str]
    checks: list[Check]
    metadata: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    openvino_checks: list[Check] = field(default_factory=list)
    """OpenVINO's rows: they decide what ``openvino.json`` records (a failed one leaves a precision out); the
    export's promise is ``checks``, ONNX Runtime's."""


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"{out}: folder exists and is not empty; pass --force to replace it")
    parent = out.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK | os.X_OK):
        raise ExportError(f"{out}: cannot write here ({existing} is not writable)")


def _check_batches(clips: list[tuple[str, np.ndarray]], window_samples: int, dynamic_length: bool) -> list:
    """Check inputs: each clip alone, a batch of up to 4, and for a dynamic length 1 s and 7.3 s as well."""
    lengths = [window_samples] + ([SAMPLE_RATE, int(7.3 * SAMPLE_RATE)] if dynamic_length else [])
    batches = []
    for n in lengths:
        seconds = f"{n / SAMPLE_RATE:g}s"
        if n == window_samples:
            batches += [(f"{name} {seconds}", fit(a, n)[None]) for name, a in clips]
        else:
            batches.append((f"{clips[0][0]} {seconds}", fit(clips[0][1], n)[None]))
        group = clips[:4]
        batches.append((f"batch of {len(group)} {seconds}", np.stack([fit(a, n) for _, a in group])))
    return batches


def export_onnx(*, checkpoint: str | os.PathLike, out: str | os.PathLike, labels: Sequence[str] | None = None,
                template: str | None = None, window: float = 5.0, dynamic_length: bool = False,
                precision: str = "fp32", opset: int = 18, force: bool = False,
                clips: Sequence[str | os.PathLike] | None = None, threads: int = 2,
                int8_blocks: int | None = None, openvino: bool = True) -> ExportResult:
    """Export and verify the audio encoder, the label classifier and (when there is one) the text encoder.

    ``clips``: audio files or folders used to verify (and, for int8, to calibrate); without them
    the checks use synthetic signals and int8 is refused. ``int8_blocks``: quantise the last N residual
    blocks instead of searching for the longest run that keeps the bound (a choice an earlier export
    logged, or one to try); the checks judge it all the same. ``openvino``: verify the graphs on OpenVINO as
    well, f32 and (on a CPU with native bf16) bf16, and record the precisions that passed
    (:data:`~audioclip.export.openvino.RECORD_FILE`; fp32 exports; skipped with a note when OpenVINO is not
    installed). Raises :class:`ExportError` (or
    :class:`~audioclip.model.CheckpointError`) with a one-line message; nothing is written then.
    """
    out = Path(out)
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} (torch's exporter writes "
                          f"{MIN_OPSET} at the least; TensorRT 8.6 and later read it)")
    window_samples = (check_window(window, least=DYNAMIC_MIN_SAMPLES, least_is="a dynamic-length graph takes")
                      if dynamic_length else check_window(window))
    if labels is not None:
        labels = check_labels(labels)
    if template is not None:
        check_template(template)
    if precision == "int8" and not clips:
        raise ExportError("int8 needs real recordings to calibrate on: pass --clips FILE_OR_DIR")
    if int8_blocks is not None and precision != "int8":
        raise ExportError(f"--int8-blocks {int8_blocks}: only with --precision int8")
    if int8_blocks is not None and (isinstance(int8_blocks, bool) or not isinstance(int8_blocks, int)
                                    or int8_blocks < 1):
        raise ExportError(f"--int8-blocks {int8_blocks!r}: give a whole number of residual blocks, 1 or more")
    _check_out_dir(out, force)
    check_clips = load_clips(clips) if clips else synthetic_clips(window)

    model = load_model(checkpoint)
    if labels is not None and not model.has_text:
        carried = ", ".join(model.label_bank.labels) if model.label_bank else "none"
        raise ParameterError("labels", f"{checkpoint}: has no text tower, so it can only classify the labels it "
                                       f"carries ({carried}); drop {{labels}}")
    if labels is None and model.label_bank is None:
        raise ParameterError("labels", f"{checkpoint}: carries no labels; pass {{labels}}")
    classifier = ZeroShotClassifier(model, labels, template)
    source, sha256 = source_info(checkpoint)
    if Path(source).is_file():  # a path the graphs can be traced back to from anywhere, not relative to here
        source = str(Path(source).resolve())
    notes = []
    clip = model.metadata.clip_samples
    if clip and not dynamic_length and clip != window_samples:  # a head scores best on what it was trained on
        notes.append(f"{checkpoint} was fine-tuned on {clip / SAMPLE_RATE:g}-s clips but these graphs take "
                     f"{window_samples / SAMPLE_RATE:g}-s windows: pass --window {clip / SAMPLE_RATE:g} to match")
        log.warning(notes[-1])
    if precision == "int8" and len(check_clips) < MIN_INT8_CLIPS:
        notes.append(f"int8 was calibrated and checked on {len(check_clips)} clip(s) only: the blocks it quantises "
                     f"are chosen to keep the bound on them, so its accuracy on other sounds is unmeasured; pass "
                     f"--clips with {MIN_INT8_CLIPS} or more varied recordings of what it will hear")
        log.warning(notes[-1])
    if not model.has_text:
        notes.append("text_encoder.onnx not written: the checkpoint is an audio-only fine-tuned head (no text tower)")
        log.warning(notes[-1])

    metadata = {
        "labels": json.dumps(classifier.labels), "template": classifier.template,
        "logit_scale": repr(classifier.logit_scale), "mode": model.metadata.mode, "sample_rate": SAMPLE_RATE,
        "window_samples": "dynamic" if dynamic_length else window_samples,
        "min_samples": DYNAMIC_MIN_SAMPLES if dynamic_length else window_samples,
        "embedding_size": model.config.embed_dim, "precision": precision, "source": source,
        "source_sha256": sha256, "version": __version__, "opset": opset,
        "trunk_blocks": json.dumps([len(model.audio.layer1), len(model.audio.layer2)]),
    }
    if model.metadata.source_name:
        metadata["base_checkpoint"] = json.dumps({"name": model.metadata.source_name,
                                                  "sha256": model.metadata.source_sha256})

    try:  # permissions pass os.access as root, or on a read-only or virtual file system, yet fail here
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    except OSError as e:
        raise ExportError(f"{out}: cannot write here ({e.strerror or e})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
    try:
        batches = _check_batches(check_clips, window_samples, dynamic_length)
        files = _write_graphs(tmp, model=model, classifier=classifier, window_samples=window_samples,
                              dynamic_length=dynamic_length, precision=precision, opset=opset,
                              calibration=check_clips, batches=batches, metadata=metadata, threads=threads,
                              notes=notes, int8_count=int8_blocks)
        weights = [SHARED_WEIGHTS_FILE] if share_weights(tmp, [f for f in files if f != "text_encoder.onnx"]) else []
        _check_tensorrt_ready(tmp, tensorrt_files(files, precision))
        checks, references = [], {}  # PyTorch's results per check input, computed once for every graph
        for provider in ["CPUExecutionProvider", *gpu_providers()]:
            for tensorrt in ((False, True) if precision == "int8" else (False,)):
                audio = check_audio(graph_dir=tmp, precision=precision, classifier=classifier, threads=threads,
                                    batches=batches, tensorrt=tensorrt, provider=provider, references=references)
                if audio and TAIL_FILE in files:  # the provider loaded, and the export has incremental graphs
                    audio += check_incremental(graph_dir=tmp, precision=precision, classifier=classifier,
                                               clips=check_clips, window_samples=window_samples, threads=threads,
                                               tensorrt=tensorrt, provider=provider, references=references)
                checks += audio
        if model.has_text:
            checks.append(check_text(graph_dir=tmp, model=model, labels=classifier.labels,
                                     template=classifier.template, threads=threads))
        failed = [c for c in checks if not c.passed]
        if failed:
            c = failed[0]
            raise ExportError(f"verification failed: {c.graph} {c.precision} on {c.inputs}: max|diff| "
                              f"{c.max_abs_diff:.3g}, cosine {c.min_cosine:.6f}, top-1 {c.top1_agree} "
                              f"(bound {c.bound}); {len(failed)} of {len(checks)} checks failed", checks)
        openvino_checks = []
        if openvino:
            openvino_checks = _verify_openvino(tmp, precision=precision, classifier=classifier, batches=batches,
                                               clips=check_clips, window_samples=window_samples, threads=threads,
                                               references=references, notes=notes)
        (tmp / "labels.json").write_text(json.dumps(
            {"labels": classifier.labels, "template": classifier.template, "logit_scale": classifier.logit_scale,
             "embedding_size": model.config.embed_dim, "sample_rate": SAMPLE_RATE,
             "window_samples": metadata["window_samples"]}, indent=2) + "\n")
        if model.has_text:  # label scores' background bank, so that the torch-free path needs no text pass
            files.append(write_export_bank(tmp, torch_bank(model, classifier.template), classifier.template))
        lines = trtexec_lines(files=files, precision=precision, window_samples=window_samples,
                              dynamic_length=dynamic_length, max_batch=TRT_MAX_BATCH, max_samples=60 * SAMPLE_RATE,
                              min_samples=metadata["min_samples"], opset=opset,
                              stage_shapes=stage_shapes(tmp, files, model,
                                                       _stream_lengths(window_samples, dynamic_length)))
        (tmp / "trtexec.txt").write_text("\n".join(lines) + "\n")
        (tmp / "README.txt").write_text(readme_text(metadata=metadata, files=files + weights,
                                                    checks=checks + openvino_checks, notes=notes, trtexec=lines,
                                                    labels=classifier.labels))
        files += weights + ["labels.json", "trtexec.txt", "README.txt"]
        if (tmp / OPENVINO_RECORD).is_file():
            files.append(OPENVINO_RECORD)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s: %s", out, ", ".join(files))
    return ExportResult(out, files, checks, metadata, notes, openvino_checks)


def _write_graphs(tmp: Path, *, model, classifier, window_samples: int, dynamic_length: bool, precision: str,
                  opset: int, calibration, batches: list, metadata: dict, threads: int, notes: list[str],
                  int8_count: int | None = None) -> list[str]:
    """Export (and for fp16/int8 convert) the graphs into ``tmp``; returns the file names.

    ``calibration``: the check clips, which int8 calibrates on; ``batches``: the check inputs, on
    which int8 chooses its blocks as well; ``int8_count``: the trailing blocks to quantise, not searched.

    int8 writes two flavours of each audio graph: ``NAME.onnx`` for ONNX Runtime's CPU kernels and
    ``NAME.trt.onnx`` in the symmetric form TensorRT takes (see :func:`precision.quantize_int8`).
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dims = {0: batch}
    if dynamic_length:
        dims[1] = torch.export.Dim("samples", min=DYNAMIC_MIN_SAMPLES, max=MAX_SECONDS * SAMPLE_RATE)
    # An example of another length than the window guards against a length baked in by tracing.
    example = (torch.zeros(2, window_samples + (HOP_EXAMPLE_SHIFT if dynamic_length else 0)),)
    fast = precision != "fp32"  # the faster front end's rounding only matters to fp32's bound (graphs.FrontEnd)
    graphs = {
        "audio_encoder.onnx": (AudioEncoderGraph(model, conv_front_end=fast), ["embedding"]),
        "classifier.onnx": (ClassifierGraph(model, classifier.label_embeddings, classifier.logit_scale,
                                            conv_front_end=fast, linear=classifier.linear),
                            ["logits", "probs"]),
    }
    files = []
    int8_blocks: dict[bool, list] = {}  # per flavour (tensorrt?)
    calib = None
    if precision == "int8":
        calib = calibration_windows(calibration, window_samples)
        inputs = [w[None] for w in calib] + [x for _, x in batches]
    for name, (module, outputs) in graphs.items():
        fp32, graph = export_fp32(tmp, name, module, example, precision, input_name="waveform", output_names=outputs,
                                   dynamic=dims, opset=opset)
        if precision == "int8" and not int8_blocks:  # chosen on the encoder: the classifier has the same trunk
            given = None if int8_count is None else _given_int8_blocks(fp32, int8_count)  # both flavours
            for tensorrt in (False, True):
                blocks = given or _choose_int8_blocks(fp32, calib, inputs, threads, tensorrt,
                                                      most=len(int8_blocks[False]) if tensorrt else None)
                int8_blocks[tensorrt] = blocks
                notes.append(f"int8 {'TensorRT (*.trt.onnx)' if tensorrt else 'ONNX Runtime'}: "
                             f"{describe_blocks(blocks)}{' (as given)' if int8_count else ''}; the rest fp32")
        files += write_at_precision(tmp, name, fp32, graph, precision=precision, metadata=metadata,
                                     int8_blocks=int8_blocks, calibration=calib)
    if dynamic_length or _windows_share(model, window_samples):
        files += write_stage_graphs(tmp, model=model, classifier=classifier, window_samples=window_samples,
                                     dynamic_length=dynamic_length, precision=precision, opset=opset,
                                     calibration=calib, int8_blocks=int8_blocks,
                                     metadata=metadata)
    else:
        notes.append(f"no incremental graphs: {window_samples / SAMPLE_RATE:g}-s windows are too short to share "
                     f"columns at any hop, so streams compute them whole")
        log.info(notes[-1])
    if model.has_text:
        log.info("exporting text_encoder.onnx (fp32 at every precision)")
        tokens = torch.zeros(2, CONTEXT_LENGTH, dtype=torch.int64)
        export_graph(TextEncoderGraph(model), (tokens,), tmp / "text_encoder.onnx", input_name="tokens",
                     output_names=["embedding"], dynamic={0: torch.export.Dim("n", min=1, max=4096)}, opset=opset)
        set_metadata(tmp / "text_encoder.onnx", {**metadata, "graph": "text_encoder", "precision": "fp32"})
        files.append("text_encoder.onnx")
    return files


def _verify_openvino(tmp: Path, *, precision: str, classifier, batches, clips, window_samples: int, threads: int,
                     references: dict, notes: list[str]) -> list[Check]:
    """OpenVINO's rows of the verification table; writes the record of the precisions that passed (a note says
    what was not verified and why; a failure here never fails the export)."""
    from .openvino import import_openvino, write_record

    try:
        import_openvino()
    except ValueError as e:
        notes.append(f"OpenVINO not verified: {e}")
        log.warning(notes[-1])
        return []
    if precision != "fp32":
        write_record(tmp, {"precisions": {}, "not_verified": {p: f"a {precision} export: OpenVINO runs fp32 exports "
                                                                 f"(its bf16 converts them itself)"
                                                              for p in ("fp32", "bf16")}})
        return []
    model = classifier.model
    checks, record = check_openvino(graph_dir=tmp, classifier=classifier, batches=batches, clips=clips,
                                    window_samples=window_samples, threads=threads, references=references,
                                    text=(classifier.labels, classifier.template) if model.has_text else None)
    write_record(tmp, record)
    for name, why in record["not_verified"].items():
        notes.append(f"OpenVINO {name} not verified (--runtime openvino --precision {name} refuses this export): "
                     f"{why}")
    if record["precisions"]:
        plans = [p + (f" ({', '.join(plan['fp32_stages'])} in f32)" if plan["fp32_stages"] else "")
                 for p, plan in record["precisions"].items()]
        notes.append(f"OpenVINO verified: {', '.join(plans)}")
    return checks


def _stream_lengths(window_samples: int, dynamic_length: bool) -> list[int]:
    """The window lengths the incremental graphs' ``trtexec`` profiles cover: the export's window first, and for
    a dynamic length the shortest input and a 60-s window."""
    return [window_samples] + ([DYNAMIC_MIN_SAMPLES, 60 * SAMPLE_RATE] if dynamic_length else [])


def _windows_share(model, window_samples: int) -> bool:
    """Whether windows of ``window_samples`` share columns at some hop (the shortest, one stride)."""
    from ..model.overlap import OverlapEncoder, trunk_blocks

    return OverlapEncoder(trunk_blocks(model.audio), window_samples).cost(1) < 1.0


HOP_EXAMPLE_SHIFT = 1234
MIN_INT8_CLIPS = 5
"""Fewer ``--clips`` than this for int8 give a warning: with one clip, golden's choice grew from 2
blocks to 10 (all of them checked on that clip alone)."""
MAX_CALIBRATION_CLIPS = 32
"""int8 calibrates on at most this many windows (:func:`calibration_windows`): calibration and the
choice of blocks run the graph on each of them, several times over."""


def calibration_windows(clips: list[tuple[str, np.ndarray]], window_samples: int) -> np.ndarray:
    """Windows ``[N, window_samples]`` to calibrate int8 on, at most ``MAX_CALIBRATION_CLIPS``, evenly spread.

    Each clip fitted to the window, and windows cut at half-window hops across the clips played
    one after another: those hold the seams and onsets a stream meets. Calibrated on the clips
    alone, activation ranges were too narrow: the coughing clip repeated to 7.3 s saturated them
    (cosine 0.94 to fp32, 0.997 at 5 s).
    """
    windows = [fit(audio, window_samples) for _, audio in clips]
    stream = np.concatenate([audio for _, audio in clips])
    windows += [fit(np.roll(stream, -start), window_samples) for start in range(0, len(stream), window_samples // 2)]
    picked = np.linspace(0, len(windows) - 1, min(len(windows), MAX_CALIBRATION_CLIPS)).round().astype(int)
    return np.stack([windows[i] for i in picked])


def _choose_int8_blocks(fp32: Path, calibration: np.ndarray, inputs: list[np.ndarray], threads: int,
                        tensorrt: bool, most: int | None) -> list:
    """The blocks int8 quantises, judged on the calibration windows and every check input."""
    try:
        return prec.choose_int8_blocks(fp32, calibration, threads=threads, tensorrt=tensorrt, inputs=inputs,
                                       most=most)[0]
    except ValueError as e:
        raise ExportError(f"{e}{' (TensorRT form)' if tensorrt else ''}") from None


def _given_int8_blocks(fp32: Path, count: int) -> list:
    """The last ``count`` residual blocks of the graph, refused when it has fewer."""
    blocks = prec.residual_blocks(onnx.load(str(fp32), load_external_data=False))
    if count > len(blocks):
        raise ExportError(f"--int8-blocks {count}: the audio trunk has {len(blocks)} residual blocks; give 1 to "
                          f"{len(blocks)}")
    log.info("int8: quantising the pointwise convolutions of the last %d of %d residual blocks, as given",
             count, len(blocks))
    return blocks[-count:]


def _check_tensorrt_ready(folder: Path, names: Sequence[str]) -> None:
    """Fail the export when a graph meant for TensorRT breaks a rule of its ONNX parser (:mod:`.trt_check`)."""
    for name in names:
        problems = tensorrt_problems(onnx.load(str(folder / name)))
        if problems:
            raise ExportError(f"{name} is not TensorRT-ready ({len(problems)} problem(s)), first: {problems[0]}; "
                              f"this is a bug in audioclip-export, please report it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to ``out``; an existing ``out`` (already checked) is replaced."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
