"""A static check of an ONNX graph against what TensorRT's ONNX parser takes.

No GPU is needed: the rules are those of the parser's published support matrix (onnx-tensorrt,
``docs/operators.md``, TensorRT 10), applied to the graph's nodes, attributes and types. It cannot
prove that an engine builds (only ``trtexec`` can), but it catches what the parser is documented to
refuse. The rules this project's graphs could break:

- every node is a standard ONNX operator the parser imports;
- ``DequantizeLinear`` reads int8 (not the int32 biases ONNX Runtime's quantizer writes by default)
  with zero points 0, and ``QuantizeLinear`` writes int8 with zero points 0 (an absent zero point
  means uint8, which TensorRT takes only as a network input or output); activations are quantized
  per tensor, weights per tensor or per output channel (axis 0);
- reduction axes, and the axes of ``Squeeze``/``Unsqueeze``, are build-time constants;
- pooling is 2-D or 3-D, undilated, and ``MaxPool`` has no ``Indices`` output;
- ``LayerNormalization`` has only its first output.
"""

from __future__ import annotations

import numpy as np
import onnx

SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RMSNormalization RNN RoiAlign
RotaryEmbedding Round STFT ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
"""ONNX operators TensorRT 10's ONNX parser imports (those marked supported in its support matrix)."""

_CONSTANT_AXES = frozenset({"Squeeze", "Unsqueeze", *(op for op in SUPPORTED_OPS if op.startswith("Reduce"))})
"""Operators whose second input (axes), when given, must be a build-time constant."""


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """What in ``model`` TensorRT's ONNX parser is documented to refuse, one line per problem; empty when none."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {out: node.attribute[0].t for node in graph.node if node.op_type == "Constant" and node.attribute
                 for out in node.output}
    constants.update(initializers)
    problems = []
    for node in graph.node:
        where = f"{node.op_type} node {node.name or '(unnamed)'}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: operator of domain {node.domain!r}, which TensorRT does not import")
            continue
        if node.op_type not in SUPPORTED_OPS:
            problems.append(f"{where}: operator not supported by TensorRT's ONNX parser")
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in _CONSTANT_AXES:
            if len(node.input) > 1 and node.input[1] and node.input[1] not in constants:
                problems.append(f"{where}: axes computed at run time; TensorRT needs them constant")
        if node.op_type in ("DequantizeLinear", "QuantizeLinear"):
            problems += _quantization_problems(node, where, constants)
        if node.op_type in ("MaxPool", "AveragePool"):
            if len(attrs.get("kernel_shape", ())) not in (2, 3):
                dims = len(attrs.get("kernel_shape", ()))
                problems.append(f"{where}: {dims}-D pooling; TensorRT pools in 2-D or 3-D")
            if any(d != 1 for d in attrs.get("dilations", ())):
                problems.append(f"{where}: dilated pooling")
            if len([o for o in node.output if o]) > 1:
                problems.append(f"{where}: the Indices output, which TensorRT does not compute")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: outputs beyond the first, which TensorRT does not compute")
    uint8 = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.UINT8]
    uint8 += [v.name for v in graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8]
    problems += [f"tensor {name}: uint8, which TensorRT takes only as a network input or output" for name in uint8]
    return problems


def _quantization_problems(node: onnx.NodeProto, where: str, constants: dict) -> list[str]:
    scale = constants.get(node.input[1])
    if scale is not None and len(scale.dims) > 0 and max(scale.dims) > 1:  # per-channel
        if node.input[0] not in constants:
            return [f"{where}: per-channel quantization of an activation; TensorRT quantizes activations per tensor"]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if axis != 0:
            return [f"{where}: per-channel weights along axis {axis}; TensorRT takes the output-channel axis 0"]
    zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "DequantizeLinear" and node.input[0] in constants:
        dtype = constants[node.input[0]].data_type
        if dtype != onnx.TensorProto.INT8:
            return [f"{where}: dequantizes {onnx.TensorProto.DataType.Name(dtype).lower()}; TensorRT "
                    f"dequantizes int8 only (keep such tensors, e.g. biases, in float)"]
    if zero_point is None:
        if node.op_type == "QuantizeLinear":
            return [f"{where}: no zero point, so it writes uint8; TensorRT needs int8 with zero point 0"]
        return []
    if zero_point not in constants:
        return [f"{where}: zero point computed at run time; TensorRT needs a constant 0"]
    values = onnx.numpy_helper.to_array(constants[zero_point])
    problems = []
    if values.dtype != np.int8:
        problems.append(f"{where}: {values.dtype} zero point; TensorRT quantizes to int8")
    if values.any():
        problems.append(f"{where}: non-zero zero point; TensorRT's quantization is symmetric (zero points 0)")
    return problems
