"""What an export folder tells people: the verification table, the trtexec command lines, README.txt."""

from __future__ import annotations

import json
from typing import Sequence

from ..model.constants import CONTEXT_LENGTH
from .incremental import FRONT_FILE, LAYER1_FILE, LAYER2_FILES, STEM_FILE, TAIL_FILE
from .runtime import tensorrt_name
from .shared import SHARED_WEIGHTS_FILE
from .verify import Check

FP32_GRAPHS = ("text_encoder.onnx", FRONT_FILE)
"""Graphs that are fp32 at every precision: one file, no TensorRT flavour."""


def tensorrt_files(files: Sequence[str], precision: str) -> list[str]:
    """The graphs among ``files`` that TensorRT builds engines from: all but int8's ONNX Runtime flavour."""
    return [name for name in files if precision != "int8" or name in FP32_GRAPHS or name.endswith(".trt.onnx")]


TENSORRT_10_0_MAX_OPSET = 20
"""The highest ONNX opset TensorRT 10.0's parser reads (onnx-tensorrt's support matrix)."""


def trtexec_lines(*, files: Sequence[str], precision: str, window_samples: int, dynamic_length: bool,
                  max_batch: int, max_samples: int, min_samples: int, opset: int,
                  stage_shapes: dict[str, tuple[str, Sequence[int], tuple[int, int, int]]] | None = None) -> list[str]:
    """``trtexec`` commands that build one TensorRT engine per graph.

    fp16 and int8 graphs carry their precision in their types (fp32 front end, Cast and QDQ
    nodes), so they are built ``--stronglyTyped``: TensorRT must not lower the front end to fp16,
    where the power spectrum overflows. fp32 graphs are built in fp32 for the same reason. int8
    engines are built from the ``.trt.onnx`` flavour (explicit quantization, zero points 0, as
    TensorRT requires). ``stage_shapes``: per incremental graph (its name without ``.trt``), its input's
    name, its shape without the last axis (columns; frames for the front end: the middle axis) and that
    axis' ``(min, opt, max)``.
    """
    samples = f"samples dynamic, at least {min_samples}" if dynamic_length else f"samples fixed to {window_samples}"
    lines = ["# TensorRT engines for these graphs (TensorRT >= 10). Shapes: min / opt / max.",
             *([f"# opset {opset}: TensorRT 10.0 reads ONNX opsets up to {TENSORRT_10_0_MAX_OPSET}; use a "
                f"release that reads {opset} (10.15 reads up to 24) or export with --opset 18"]
               if opset > TENSORRT_10_0_MAX_OPSET else []),
             f"# waveform: [batch, samples] float32 at 44.1 kHz; {samples}."]
    flags = " --stronglyTyped" if precision in ("fp16", "int8") else ""
    lo, hi = (min_samples, max_samples) if dynamic_length else (window_samples, window_samples)
    for name in tensorrt_files(files, precision):
        stem = name.removesuffix(".onnx").removesuffix(".trt")
        plain = name.replace(".trt.onnx", ".onnx")
        if stage_shapes and plain in stage_shapes:
            input_name, dims, widths = stage_shapes[plain]
            shapes = " ".join(f"--{kind}Shapes={input_name}:" + "x".join(map(str, _with_width(dims, w, plain)))
                              for kind, w in zip(("min", "opt", "max"), widths))
            engine_flags = flags if plain != FRONT_FILE else ""
        elif name == "text_encoder.onnx":
            shapes = (f"--minShapes=tokens:1x{CONTEXT_LENGTH} --optShapes=tokens:16x{CONTEXT_LENGTH} "
                      f"--maxShapes=tokens:256x{CONTEXT_LENGTH}")
            engine_flags = ""
        else:
            shapes = (f"--minShapes=waveform:1x{lo} --optShapes=waveform:1x{window_samples} "
                      f"--maxShapes=waveform:{max_batch}x{hi}")
            engine_flags = flags
        engine_precision = precision if name not in FP32_GRAPHS else "fp32"
        lines.append(f"trtexec --onnx={name} --saveEngine={stem}.{engine_precision}.plan {shapes}{engine_flags}")
    return lines


def _with_width(dims: Sequence[int], width: int, name: str) -> list[int]:
    """An input shape with its width axis: frames are the front end's middle axis, columns every other's last."""
    return [dims[0], width, *dims[1:]] if name == FRONT_FILE else [*dims, width]


def format_checks(checks: Sequence[Check]) -> list[str]:
    """The verification table as fixed-width text."""
    header = ("graph", "precision", "input", "shape", "max|diff|", "min cos", "top-1", "bound", "ok", "ms")
    rows = [header] + [(c.graph, c.precision, c.inputs, "x".join(map(str, c.shape)), f"{c.max_abs_diff:.2e}",
                        f"{c.min_cosine:.6f}", c.top1_agree, c.bound, "yes" if c.passed else "NO", f"{c.ms:.0f}")
                       for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def readme_text(*, metadata: dict, files: Sequence[str], checks: Sequence[Check], notes: Sequence[str],
                trtexec: Sequence[str], labels: Sequence[str]) -> str:
    window = metadata["window_samples"]
    if window == "dynamic":
        shape = f"[batch, samples] (any length >= {metadata['min_samples']})"
    else:
        shape = f"[batch, {window}]"
    lines = [
        "AudioCLIP ONNX export (audioclip-export onnx)",
        "",
        f"source:     {metadata['source']} (sha256 {metadata['source_sha256']})",
        f"package:    audioclip-stream {metadata['version']}, opset {metadata['opset']}",
        f"precision:  {metadata['precision']} (front end always fp32; text encoder fp32)",
        f"labels:     {len(labels)}: {', '.join(labels)}",
        f"template:   {metadata['template']!r}",
        f"logit scale {float(metadata['logit_scale']):g}",
        "",
        "Graphs (input waveform: float32 in [-1, 1] at 44.1 kHz, mono):",
    ]
    described = {
        "audio_encoder.onnx": f"waveform {shape} -> embedding [batch, {metadata['embedding_size']}], L2-normalised",
        "classifier.onnx": f"waveform {shape} -> logits, probs [batch, {len(labels)}] (labels as constants)",
        "text_encoder.onnx": f"tokens int64 [n, {CONTEXT_LENGTH}] (audioclip.tokenize) -> embedding "
                             f"[n, {metadata['embedding_size']}], L2-normalised",
    }
    described.update({tensorrt_name(g): f"{g}, int8 in the symmetric form TensorRT takes"
                      for g in ("audio_encoder.onnx", "classifier.onnx")})
    stage = "columns of a window or of a slice of one (any width)"
    described.update({
        FRONT_FILE: "frames [1, n, 1654] of the padded signal at the reference's scale -> dB [1, 3, 341, n] "
                    "(fp32 at every precision)",
        STEM_FILE: f"dB [1, 3, 341, w] -> stem [1, C, 86, w'] ({stage})",
        LAYER1_FILE: f"stem -> layer1 ({stage})",
        **{f: f"layer1 -> layer2 ({stage}; windows whose layer1 has {p} columns)"
           for f, p in zip(LAYER2_FILES.values(), ("an even number of", "an odd number of"))},
        TAIL_FILE: "a whole window's layer2 -> embedding, logits, probs (as audio_encoder + classifier)",
    })
    described.update({tensorrt_name(g): f"{g}, int8 in the symmetric form TensorRT takes"
                      for g in (STEM_FILE, LAYER1_FILE, *LAYER2_FILES.values(), TAIL_FILE)})
    described["background.npz"] = ("the background bank of label scores, embedded with the template "
                                   "(audioclip.stream.scoring)")
    described[SHARED_WEIGHTS_FILE] = "the weights the audio graphs hold alike, stored once (keep it beside them)"
    lines += [f"  {f}: {described[f]}" for f in files if f in described]
    lines += [f"  note: {n}" for n in notes]
    keys = sorted({*metadata, *(("int8_blocks", "int8_scheme") if metadata["precision"] == "int8" else ())})
    lines += ["", "Metadata on every graph (onnx metadata_props): " + json.dumps(keys), "",
              "Python, no torch needed:",
              "  from audioclip.export.runtime import OnnxClassifier",
              "  probs, similarities = OnnxClassifier('THIS_FOLDER', threads=2).scores(waveform)",
              *(["  # other labels, embedded by text_encoder.onnx:",
                 "  OnnxClassifier('THIS_FOLDER', labels=['dog', 'rain'], template='the sound of {}')"]
                if "text_encoder.onnx" in files else []),
              "", "Verification against PyTorch at export (ONNX Runtime; CPU unless a provider is named):"]
    lines += ["  " + row for row in format_checks(checks)]
    lines += ["", "TensorRT (also in trtexec.txt). These graphs pass a static check against the support matrix of",
              "TensorRT 10's ONNX parser (audioclip.export.trt_check); building the engines is what proves them:"]
    lines += ["  " + t for t in trtexec if not t.startswith("#")]
    return "\n".join(lines) + "\n"
