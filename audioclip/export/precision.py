"""fp16 and int8 versions of an exported fp32 graph, with the front end kept in fp32.

The front end (framing, learned transform, power, log) must stay fp32: the power of loud bins
exceeds the fp16 range (65504) and its dB values hold quiet bins 150 dB below the loud ones. It
is found structurally: every node the first trunk convolution depends on. int8 quantises only
the stages listed in ``INT8_STAGES`` (see ``quantize_int8`` for the measurements).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

log = logging.getLogger(__name__)

INT8_STAGES = (".layer4.",)
"""Trunk stages whose convolutions the int8 graph quantises; the rest stays fp32 (measured: see ``quantize_int8``)."""


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


def front_end_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The nodes computing the dB spectrogram: everything the first ``Conv`` of the trunk reads."""
    first_conv = next((n for n in model.graph.node if n.op_type == "Conv"), None)
    if first_conv is None:
        raise ValueError("graph has no Conv node: not an audio encoder")
    return ancestors(model.graph, first_conv.input[0])


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


def to_fp16(model: onnx.ModelProto, keep_stages: Sequence[str] = FP16_KEEP_STAGES) -> onnx.ModelProto:
    """fp16 trunk between an fp32 front end and an fp32 head; inputs and outputs stay float32.

    The trunk's float initializers become fp16 and one ``Cast`` is placed on each float tensor
    that crosses the boundary between the fp32 and fp16 parts.
    """
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    stem = next(n for n in graph.node if n.op_type == "Conv")  # reads dB values: fp16 would round them by 0.06 dB
    kept = [n for n in graph.node if n.op_type == "Conv" and any(stage in i for i in n.input[1:2] for stage in keep_stages)]
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
                    attr.t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
    for out in graph.output:
        if is_half.get(out.name, False):
            raise ValueError(f"graph output {out.name} would be fp16: the head is expected to stay fp32")
    graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    unused = {name for name, t in initializers.items() if t.data_type == onnx.TensorProto.FLOAT and False not in users.get(name, {True})}
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


def int8_nodes(model: onnx.ModelProto, stages: Sequence[str] = INT8_STAGES) -> list[str]:
    """Names of the residual-block convolutions (not the gates) in ``stages``."""
    return [n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1
            and any(stage in n.input[1] for stage in stages) and ".att" not in n.input[1]]


def quantize_int8(src: Path, dst: Path, *, calibration: np.ndarray, stages: Sequence[str] = INT8_STAGES) -> None:
    """Static QDQ int8 (per-channel int8 weights, uint8 activations, MinMax) of the convolutions of ``stages``.

    Measured on the golden checkpoint and the five ESC-50 check clips (cosine to PyTorch, worst
    clip): quantising one part at a time, the stem conv alone gives 0.907, layer1 0.904, layer2
    0.940, layer3 0.982, the attention gates 0.947, layer4 0.998; layers 3 and 4 together 0.981,
    the whole trunk 0.87-0.89 (MinMax, percentile or entropy calibration alike). The dB-domain
    activations do not survive per-tensor uint8, so only layer4 meets the 0.99 bound. The front
    end is never quantised.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(src))
    chosen = set(int8_nodes(model, stages))
    exclude = [n.name for n in model.graph.node if n.name not in chosen]
    log.info("int8: quantising %d Conv nodes of %s, the rest stays fp32", len(chosen), ", ".join(stages))
    quantize_static(str(src), str(dst), _Calibration(model.graph.input[0].name, calibration),
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, op_types_to_quantize=["Conv"], nodes_to_exclude=exclude,
                    calibrate_method=CalibrationMethod.MinMax)
