"""The static TensorRT check: each rule on a small hand-built graph, and the exported graphs pass it."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from audioclip.export.exporter import ExportError, export_onnx
from audioclip.export.report import tensorrt_files, trtexec_lines
from audioclip.export.trt_check import tensorrt_problems

LABELS = ["siren", "dog bark", "rain"]


def graph_of(nodes, initializers=(), value_info=()) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=list(initializers), value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def qdq(zero_point: np.ndarray | None, bias_dtype=np.int8) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> Conv(weights, dequantized bias) -> y."""
    inits = [numpy_helper.from_array(np.float32(0.1), "scale"),
             numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.ones(4, bias_dtype), "bq"),
             numpy_helper.from_array(np.float32(0.01), "bs")]
    zp = []
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        zp = ["zp"]
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", *zp], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "scale", *zp], ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], name="bias_dq"),
             helper.make_node("Conv", ["xd", "w", "b"], ["y"], name="conv")]
    return graph_of(nodes, inits)


def test_symmetric_int8_with_an_int8_bias_passes():
    assert tensorrt_problems(qdq(np.int8(0))) == []


@pytest.mark.parametrize("model, message", [
    (qdq(np.int8(0), bias_dtype=np.int32), "bias_dq: dequantizes int32"),  # ONNX Runtime's default biases
    (qdq(None), "q: no zero point, so it writes uint8"),
    (qdq(np.int8(3)), "non-zero zero point"),
    (qdq(np.uint8(128)), "uint8 zero point"),
])
def test_quantization_tensorrt_refuses_is_found(model, message):
    assert any(message in p for p in tensorrt_problems(model)), tensorrt_problems(model)


def test_per_channel_scales_must_be_weights_along_the_output_channels():
    def graph(axis, on_activation=False):
        inits = [numpy_helper.from_array(np.float32(0.1), "scale"), numpy_helper.from_array(np.int8(0), "zp"),
                 numpy_helper.from_array(np.full(4, 0.1, np.float32), "scales"),
                 numpy_helper.from_array(np.zeros(4, np.int8), "zps"),
                 numpy_helper.from_array(np.ones((4, 4, 1, 1), np.int8), "wq")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["xq"], name="q"),
                 helper.make_node("DequantizeLinear", ["xq", "scale", "zp"], ["xd"], name="dx"),
                 helper.make_node("DequantizeLinear", ["xq" if on_activation else "wq", "scales", "zps"], ["w"],
                                  name="dw", axis=axis),
                 helper.make_node("Conv", ["xd", "w"], ["y"], name="conv")]
        return graph_of(nodes, inits)

    assert tensorrt_problems(graph(axis=0)) == []
    assert tensorrt_problems(graph(axis=1)) == [
        "DequantizeLinear node dw: per-channel weights along axis 1; TensorRT takes the output-channel axis 0"]
    assert tensorrt_problems(graph(axis=0, on_activation=True)) == [
        "DequantizeLinear node dw: per-channel quantization of an activation; "
        "TensorRT quantizes activations per tensor"]


def test_unsupported_operators_and_domains_are_found():
    model = graph_of([helper.make_node("DFT", ["x"], ["d"], name="dft"),
                      helper.make_node("FusedConv", ["d"], ["y"], name="fused", domain="com.microsoft")])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    problems = tensorrt_problems(model)
    assert problems == ["DFT node dft: operator not supported by TensorRT's ONNX parser",
                        "FusedConv node fused: operator of domain 'com.microsoft', which TensorRT does not import"]


def test_run_time_axes_are_found_and_constant_axes_pass():
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    constant = graph_of([helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")], [axes])
    assert tensorrt_problems(constant) == []
    run_time = graph_of([helper.make_node("Shape", ["x"], ["s"], name="shape"),
                         helper.make_node("Unsqueeze", ["x", "s"], ["y"], name="unsq")])
    assert tensorrt_problems(run_time) == [
        "Unsqueeze node unsq: axes computed at run time; TensorRT needs them constant"]


def test_pooling_and_normalisation_limits_are_found():
    model = graph_of([
        helper.make_node("MaxPool", ["x"], ["p", "i"], name="indices", kernel_shape=[2, 2]),
        helper.make_node("MaxPool", ["p"], ["p1"], name="one_d", kernel_shape=[2]),
        helper.make_node("MaxPool", ["p1"], ["p2"], name="dilated", kernel_shape=[2, 2], dilations=[2, 1]),
        helper.make_node("LayerNormalization", ["p2", "x"], ["y", "mean"], name="ln"),
    ], value_info=[helper.make_tensor_value_info("u", TensorProto.UINT8, [1])])
    problems = "\n".join(tensorrt_problems(model))
    for expected in ("indices: the Indices output", "one_d: 1-D pooling", "dilated: dilated pooling",
                     "ln: outputs beyond the first", "tensor u: uint8"):
        assert expected in problems


@pytest.mark.slow
def test_exported_graphs_pass_and_the_onnx_runtime_int8_flavour_does_not(tmp_path, clips_dir, tiny_checkpoint, caplog):
    # --int8-blocks 2: the blocks as given, no search (the search runs in the other int8 exports), still verified
    with caplog.at_level(logging.INFO, logger="audioclip.export"):
        result = export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "int8", labels=LABELS, precision="int8",
                             clips=[clips_dir], window=1.0, int8_blocks=2)
    assert "worst cosine" not in caplog.text and "last 2 of 4 residual blocks, as given" in caplog.text
    for name in ("audio_encoder.onnx", "audio_encoder.trt.onnx"):
        meta = {p.key: p.value for p in onnx.load(str(result.out / name)).metadata_props}
        assert meta["int8_blocks"] == "pointwise convolutions of layer3.0 to layer4.0 (2 residual blocks)"
    assert any("layer3.0 to layer4.0 (2 residual blocks) (as given)" in note for note in result.notes)
    assert all(c.passed for c in result.checks)
    trt = tensorrt_files(result.files, "int8")
    # the incremental graphs too (1-s windows share columns): the front end is fp32 at every precision
    assert sorted(trt) == ["audio_encoder.trt.onnx", "classifier.trt.onnx", "incremental_front.onnx",
                           "incremental_layer1.trt.onnx", "incremental_layer2_even.trt.onnx",
                           "incremental_stem.trt.onnx", "incremental_tail.trt.onnx", "text_encoder.onnx"]
    quantised = set()
    for name in trt:
        model = onnx.load(str(result.out / name))
        assert tensorrt_problems(model) == [], name
        biases = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 2]
        initializers = {t.name for t in model.graph.initializer}
        if any(n.op_type == "DequantizeLinear" for n in model.graph.node):  # quantised convolutions keep float biases
            quantised.add(name)
            assert any(n.input[1] not in initializers for n in biases)
            assert all(b.input[2] in initializers for b in biases)
    assert {"audio_encoder.trt.onnx", "classifier.trt.onnx", "incremental_tail.trt.onnx"} <= quantised
    # the ONNX Runtime flavour (uint8 activations, int32 biases) is not for TensorRT, and the check says so
    ort_problems = "\n".join(tensorrt_problems(onnx.load(str(result.out / "audio_encoder.onnx"))))
    assert "uint8 zero point" in ort_problems and "dequantizes int32" in ort_problems


@pytest.mark.slow
def test_an_export_breaking_a_tensorrt_rule_fails_and_leaves_nothing(tmp_path, monkeypatch, tiny_checkpoint):
    from audioclip.export import exporter

    monkeypatch.setattr(exporter, "tensorrt_problems", lambda model: ["DFT node x: operator not supported"])
    with pytest.raises(ExportError, match="audio_encoder.onnx is not TensorRT-ready .*DFT node x"):
        export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "out", labels=LABELS, window=0.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("blocks, precision, message", [
    (2, "fp32", "--int8-blocks 2: only with --precision int8"),
    (0, "int8", "--int8-blocks 0: give a whole number of residual blocks, 1 or more"),
    pytest.param(5, "int8", "--int8-blocks 5: the audio trunk has 4 residual blocks; give 1 to 4",
                 marks=pytest.mark.slow)])  # known once the encoder graph is written
def test_int8_blocks_out_of_range_or_without_int8_are_refused_and_nothing_is_written(tmp_path, clips_dir,
                                                                                     tiny_checkpoint, blocks,
                                                                                     precision, message):
    with pytest.raises(ExportError, match=re.escape(message)):
        export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "out", labels=LABELS, precision=precision,
                    clips=[clips_dir / "cat_3-95694-A-5.wav"], window=0.5, int8_blocks=blocks)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset, warned", [(18, False), (20, False), (21, True)])
def test_trtexec_lines_say_when_the_opset_needs_a_newer_tensorrt(opset, warned):
    lines = trtexec_lines(files=["audio_encoder.onnx", "classifier.onnx"], precision="fp32", window_samples=220500,
                          dynamic_length=False, max_batch=16, max_samples=220500, min_samples=220500, opset=opset)
    assert any(f"opset {opset}: TensorRT 10.0 reads ONNX opsets up to 20" in line for line in lines) == warned
    assert [line.split()[1] for line in lines if line.startswith("trtexec")] == ["--onnx=audio_encoder.onnx",
                                                                               "--onnx=classifier.onnx"]
