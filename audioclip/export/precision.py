"""fp16 and int8 versions of an exported fp32 graph, with the front end kept in fp32.

The front end (framing, learned transform, power, log) must stay fp32: the power of loud bins
exceeds the fp16 range (65504) and its dB values hold quiet bins 150 dB below the loud ones. It
is found structurally: every node the first trunk convolution depends on. int8 quantises the
pointwise convolutions of as many trailing residual blocks as keep the accuracy bound on the
calibration clips (see ``choose_int8_blocks``).
"""

from __future__ import annotations

import logging
import re
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import onnx

from .logs import dropping

log = logging.getLogger(__name__)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def ancestors(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    """Nodes whose outputs ``tensor`` depends on (the node producing it included), in graph order."""
    producers = _producers(graph)
    seen: set[str] = set()
    stack = [tensor]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(node.input)
    return [n for n in graph.node if n.name in seen]


def descendants(graph: onnx.GraphProto, tensor: str) -> list[onnx.NodeProto]:
    """Nodes that depend on ``tensor``, in graph order."""
    reached = {tensor}
    found = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(i in reached for i in node.input):
            found.append(node)
            reached.update(node.output)
    return found


def stem_conv(model: onnx.ModelProto) -> onnx.NodeProto:
    """The trunk's first convolution: the first 2-D ``Conv`` (the front end's may be a 1-D one)."""
    weights = {t.name: len(t.dims) for t in model.graph.initializer}
    stem = next((n for n in model.graph.node if n.op_type == "Conv" and weights.get(n.input[1]) == 4), None)
    if stem is None:
        raise ValueError("graph has no 2-D Conv node: not an audio encoder")
    return stem


def front_end_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes computing the dB spectrogram: everything the trunk's first ``Conv`` reads."""
    return ancestors(model.graph, stem_conv(model).input[0])


def head_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The projection and what follows it (normalisation, label scores): the last ``Gemm`` and its descendants."""
    gemm = [n for n in model.graph.node if n.op_type == "Gemm"]
    if not gemm:
        return []
    return [gemm[-1], *descendants(model.graph, gemm[-1].output[0])]


def gate_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Convolutions of the attention gates (those whose weights belong to ``att*`` modules)."""
    return [n for n in model.graph.node if n.op_type == "Conv" and any(".att" in i for i in n.input[1:2])]


FP16_KEEP_STAGES = (".layer1.", ".att1.")
"""Convolutions kept fp32 in the fp16 graph besides the front end, the stem and the projection.

Measured on the golden checkpoint and the ESC-50 check clips (worst cosine to PyTorch): front end
fp32 and the rest fp16, 0.9966; the stem conv fp32 as well, 0.9985; layer1 fp32 as well, 0.9993.
The early layers see dB values that fp16 rounds by up to 0.06 dB.
"""


def to_fp16(model: onnx.ModelProto, keep_stages: Sequence[str] = FP16_KEEP_STAGES, *,
            cast_outputs: bool = False) -> onnx.ModelProto:
    """fp16 trunk between an fp32 front end and an fp32 head; inputs and outputs stay float32.

    The trunk's float initializers become fp16 and one ``Cast`` is placed on each float tensor
    that crosses the boundary between the fp32 and fp16 parts. An output computed in fp16 is an
    error (the head is expected to stay fp32) unless ``cast_outputs``: a stage graph of the
    incremental path then casts it to float32, which the next stage graph takes.
    """
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    stem = stem_conv(model)  # reads dB values: fp16 would round them by 0.06 dB
    kept = [n for n in graph.node
            if n.op_type == "Conv" and any(stage in i for i in n.input[1:2] for stage in keep_stages)]
    fp32_nodes = {n.name for n in (*front_end_nodes(model), stem, *kept, *head_nodes(model))}
    float_tensors = {v.name for v in (*graph.input, *graph.value_info, *graph.output)
                     if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    initializers = {t.name: t for t in graph.initializer}
    float_tensors |= {name for name, t in initializers.items() if t.data_type == onnx.TensorProto.FLOAT}
    producer = _producers(graph)
    is_half = {name: producer[name].name not in fp32_nodes for name in float_tensors if name in producer}

    users: dict[str, set[bool]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, set()).add(node.name not in fp32_nodes)
    new_inits, casts, nodes = [], {}, []
    for name, t in initializers.items():
        if t.data_type != onnx.TensorProto.FLOAT or True not in users.get(name, set()):
            continue
        half = onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t).astype(np.float16), f"{name}__fp16")
        new_inits.append(half)
        casts[(name, True)] = half.name

    def cast(name: str, to_half: bool) -> str:
        if (name, to_half) not in casts:
            out = f"{name}__{'fp16' if to_half else 'fp32'}"
            to = onnx.TensorProto.FLOAT16 if to_half else onnx.TensorProto.FLOAT
            nodes.append(onnx.helper.make_node("Cast", [name], [out], name=f"cast_{out}", to=to))
            casts[(name, to_half)] = out
        return casts[(name, to_half)]

    for node in graph.node:
        half_node = node.name not in fp32_nodes
        for i, name in enumerate(node.input):
            if name not in float_tensors:
                continue
            tensor_half = is_half.get(name, False)  # graph inputs and initializers are fp32
            if tensor_half != half_node:
                node.input[i] = cast(name, half_node)
        nodes.append(node)
        if half_node:
            for attr in node.attribute:  # e.g. a float ``value`` of ConstantOfShape in the trunk
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == onnx.TensorProto.FLOAT:
                    half = onnx.numpy_helper.to_array(attr.t).astype(np.float16)
                    attr.t.CopyFrom(onnx.numpy_helper.from_array(half, attr.t.name))
    for out in graph.output:
        if not is_half.get(out.name, False):
            continue
        if not cast_outputs:
            raise ValueError(f"graph output {out.name} would be fp16: the head is expected to stay fp32")
        half = f"{out.name}__fp16"
        for node in nodes:
            node.output[:] = [half if o == out.name else o for o in node.output]
            node.input[:] = [half if i == out.name else i for i in node.input]
        nodes.append(onnx.helper.make_node("Cast", [half], [out.name], name=f"cast_{out.name}_fp32",
                                           to=onnx.TensorProto.FLOAT))
    graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    unused = {name for name, t in initializers.items()
              if t.data_type == onnx.TensorProto.FLOAT and False not in users.get(name, {True})}
    kept = [t for t in graph.initializer if t.name not in unused]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    log.info("fp16: %d front-end and head nodes kept fp32, %d casts", len(fp32_nodes), len(casts) - len(new_inits))
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


class _Calibration:
    """ONNX Runtime calibration reader over waveforms ``[N, T]`` fed one at a time."""

    def __init__(self, input_name: str, waveforms: np.ndarray):
        self._items = iter([{input_name: w[None].astype(np.float32)} for w in waveforms])

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # not needed for MinMax calibration; kept for the reader protocol
        pass


_BLOCK = re.compile(r"\.layer(\d+)\.(\d+)\.")


def _block_of(node: onnx.NodeProto) -> tuple[int, int] | None:
    """``(stage, block)`` of a residual-block convolution (gates excluded), from its weight's name."""
    if node.op_type != "Conv" or len(node.input) < 2 or ".att" in node.input[1]:
        return None
    found = _BLOCK.search(node.input[1])
    return (int(found[1]), int(found[2])) if found else None


def residual_blocks(model: onnx.ModelProto) -> list[tuple[int, int]]:
    """The trunk's residual blocks ``(stage, block)`` in graph order (layer1.0 first)."""
    return sorted({b for n in model.graph.node if (b := _block_of(n)) is not None})


def int8_nodes(model: onnx.ModelProto, blocks: Sequence[tuple[int, int]]) -> list[str]:
    """Names of the pointwise (1x1, ungrouped) convolutions of ``blocks``, shortcut projections included.

    These hold most of the trunk's arithmetic. The grouped 3x3 convolutions stay fp32: as int8 QDQ
    they run slower on ONNX Runtime's CPU kernels than in fp32 (docs/benchmarks.md).
    """
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    chosen = set(blocks)
    names = []
    for n in model.graph.node:
        if _block_of(n) not in chosen:
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        if group == 1 and shapes.get(n.input[1], ())[2:] == (1, 1):
            names.append(n.name)
    return names


def quantize_int8(src: Path, dst: Path, *, calibration: np.ndarray, blocks: Sequence[tuple[int, int]],
                  tensorrt: bool = False) -> None:
    """Static QDQ int8 of the pointwise convolutions of ``blocks``, MinMax calibration on
    ``calibration`` waveforms ``[N, T]``; the rest stays fp32.

    For ONNX Runtime's CPU kernels (the default): per-channel int8 weights and uint8 activations
    with a zero point, the form its VNNI kernels take. ``tensorrt=True``: TensorRT's explicit
    quantization takes only symmetric signed int8 (zero points 0), so activations are int8 with a
    symmetric range as well (the ReLU outputs that feed most of these convolutions then use 7 of
    the 8 bits), and biases stay float: its parser dequantizes int8 only, not the int32 biases
    ONNX Runtime's quantizer writes by default (see :mod:`.trt_check`).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    chosen = set(int8_nodes(model, blocks))
    exclude = [n.name for n in model.graph.node if n.name not in chosen]
    # ONNX Runtime advises, on the root logger, to pre-process the model: its shape inference and
    # fusions are what the exporter's graph already has, and the advice would garble the display
    with dropping("", "pre-process"):
        quantize_static(str(src), str(dst), _Calibration(model.graph.input[0].name, calibration),
                        quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["Conv"],
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": tensorrt, "WeightSymmetric": True,
                                       # TensorRT dequantizes int8 only: its biases stay float
                                       "QuantizeBias": not tensorrt})


INT8_SELECT_COSINE = 0.995
"""Worst cosine to fp32, on the calibration clips, that an int8 choice of blocks must keep (the
export's bound is 0.99; the margin covers inputs the choice was not made on)."""


def choose_int8_blocks(src: Path, calibration: np.ndarray, *, threads: int, tensorrt: bool = False,
                       inputs: Sequence[np.ndarray] | None = None, min_cosine: float = INT8_SELECT_COSINE,
                       most: int | None = None) -> tuple[list[tuple[int, int]], float]:
    """The longest run of trailing residual blocks whose int8 graph keeps ``min_cosine`` to fp32.

    Sensitivity to rounding grows towards the input: on the golden checkpoint, uint8-sized noise
    on the input of one layer1 convolution alone drops the embedding's cosine to 0.96, on one of
    layer4 to 0.9998. So the blocks are quantised from the last one backwards, and the number of
    trailing blocks is found by bisection (quantise, run on ``inputs``, compare with the fp32
    graph), which assumes that quantising more blocks never helps (the golden checkpoint's
    figures: docs/export.md).
    ``tensorrt``: choose for :func:`quantize_int8`'s TensorRT form (symmetric int8 activations).
    ``inputs``: waveforms ``[B, T]`` (any lengths the graph takes) to judge the cosine on; by
    default the calibration waveforms. ``most``: the most trailing blocks to consider (the export
    passes the ONNX Runtime form's choice when it chooses for the TensorRT form: symmetric int8 has
    half the levels for the non-negative activations after a ReLU, and was below the asymmetric
    form at every count on the golden checkpoint, docs/export.md).
    Returns the blocks and their worst cosine; raises ``ValueError`` when not even the last block
    keeps the bound (export fp32 or fp16 then).
    """
    from .runtime import session

    model = onnx.load(str(src))
    blocks = residual_blocks(model)
    if not blocks:
        raise ValueError(f"{src}: no residual-block convolutions to quantise")
    name = model.graph.input[0].name
    fp32 = session(src, threads=threads)
    inputs = list(inputs) if inputs is not None else [w[None] for w in calibration]
    reference = np.concatenate([fp32.run(None, {name: x})[0] for x in inputs])

    def worst_cosine(k: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "int8.onnx"
            quantize_int8(src, dst, calibration=calibration, blocks=blocks[-k:], tensorrt=tensorrt)
            graph = session(dst, threads=threads)
            out = np.concatenate([graph.run(None, {name: x})[0] for x in inputs])
        cos = (out * reference).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(reference, axis=-1))
        log.info("int8%s: last %d of %d residual blocks quantised: worst cosine %.4f on %d inputs",
                 " (TensorRT)" if tensorrt else "", k, len(blocks), cos.min(), len(cos))
        return float(cos.min())

    lo, best = longest_passing(len(blocks) if most is None else min(most, len(blocks)), worst_cosine, min_cosine)
    if lo == 0:
        raise ValueError(f"int8 loses too much on this checkpoint: quantising even the last residual block gives "
                         f"cosine below {min_cosine} to fp32 on the check clips; export fp32 or fp16")
    chosen = blocks[-lo:]
    log.info("int8: quantising the pointwise convolutions of the last %d of %d residual blocks (from layer%d.%d), "
             "worst cosine %.4f", lo, len(blocks), *chosen[0], best)
    return chosen, best


def longest_passing(n: int, cosine_of: Callable[[int], float], min_cosine: float) -> tuple[int, float]:
    """Largest ``k`` in ``0..n`` with ``cosine_of(k) >= min_cosine``, by bisection (``cosine_of`` falling in ``k``).

    Tries ``k = n`` first, so that a checkpoint robust to int8 costs one evaluation. Returns ``k``
    and its cosine (1.0 for ``k = 0``, which is never evaluated).
    """
    cosines = {0: 1.0}
    lo, hi = 0, n  # the answer lies in [lo, hi]
    while lo < hi:
        k = hi if len(cosines) == 1 else (lo + hi + 1) // 2
        cosines[k] = cosine_of(k)
        if cosines[k] >= min_cosine:
            lo = k
        else:
            hi = k - 1
    return lo, cosines[lo]
