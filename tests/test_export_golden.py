"""ONNX export of the golden checkpoint: parity with PyTorch and the reference on real clips (slow)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from audioclip.export import openvino
from audioclip.export.exporter import export_onnx
from audioclip.export.runtime import OnnxClassifier, session
from audioclip.export.trt_check import tensorrt_problems

from helpers import assert_graphs_match_pytorch

pytestmark = pytest.mark.slow
LABELS = ["alarm clock", "car horn", "cat", "coughing", "thunder"]


def test_golden_fp32_dynamic_length_export_matches_reference(golden_dir, golden_model, clips_dir, golden_outputs,
                                                             tmp_path):
    result = export_onnx(checkpoint=golden_dir / "checkpoint.pt", out=tmp_path / "fp32", labels=LABELS,
                         dynamic_length=True, clips=[clips_dir])
    audio_checks = [c for c in result.checks if c.graph != "text_encoder"]
    assert all(c.passed for c in result.checks)
    assert {c.inputs.split()[-1] for c in audio_checks if c.graph == "audio_encoder+classifier"} == {"5s", "1s", "7.3s"}
    # the incremental graphs as a stream of the five clips (25 s), every 5-s window at the default hop
    stream = [c for c in audio_checks if c.graph == "incremental"]
    assert [c.shape for c in stream] == [(40, 5 * 44100)]
    assert all(c.top1_agree == f"{c.shape[0]}/{c.shape[0]}" for c in stream)
    assert {1, 4} <= {c.shape[0] for c in audio_checks}
    assert max(c.max_abs_diff for c in audio_checks) < 3e-4 and min(c.min_cosine for c in audio_checks) > 0.99999
    # the written graphs against PyTorch computed here, not only the exporter's own verdict (measured 1.6e-4)
    match = assert_graphs_match_pytorch(result.out, golden_model, clips_dir, bound=3e-4, cosine=0.99999)
    assert match.windows == 5 and match.top1_agree == 5
    # white noise has no quiet bins: within 1e-4 of the reference implementation itself
    encoder = session(result.out / "audio_encoder.onnx", threads=2)
    for name in ("noise_5s", "noise_1s"):
        x = (golden_outputs[f"audio_in/{name}"] / 32768.0).astype(np.float32).reshape(1, -1)
        ref = golden_outputs[f"audio_emb/{name}"]
        ref = ref / np.linalg.norm(ref, axis=-1, keepdims=True)
        (emb,) = encoder.run(None, {"waveform": x})
        assert np.abs(emb - ref).max() <= 1e-4, name
    probs, sims = OnnxClassifier(result.out, threads=2).scores(x)
    assert probs.shape == (1, 5) and np.isclose(probs.sum(), 1.0, atol=1e-5)
    # OpenVINO on golden: f32 within the fp32 bounds with nothing held back; bf16 of the whole trunk misses its
    # bound on golden's random weights (stream cosine 0.88), so what is recorded keeps a head of the stages in f32
    record = json.loads((result.out / openvino.RECORD_FILE).read_text())
    assert record["precisions"]["fp32"] == {"fp32_stages": []}
    assert {c.graph.split(" [")[0] for c in result.openvino_checks} >= {"whole windows (stage graphs)", "incremental",
                                                                      "text_encoder"}
    if openvino.no_native_bf16() is None:
        assert 0 < len(record["precisions"]["bf16"]["fp32_stages"]) < len(openvino.STAGE_NAMES), record
        ours = OnnxClassifier(result.out, threads=2, runtime="openvino", precision="bf16").scores(x)[1]
        assert (ours * sims).sum() / np.linalg.norm(ours) / np.linalg.norm(sims) > 0.99
    else:
        assert "bf16" in record["not_verified"]


def test_golden_fp32_export_without_clips_passes_on_the_synthetic_signals(golden_dir, tmp_path):
    # a 1-s chirp has many quiet bins: PyTorch's own float32 probabilities move by 1.6e-3 from
    # those of an exact front end, so the classifier graph is judged against PyTorch's head on the
    # encoder graph's embeddings (this export failed when it was judged against PyTorch's probabilities)
    result = export_onnx(checkpoint=golden_dir / "checkpoint.pt", out=tmp_path / "fp32", labels=["a", "b"], window=1.0,
                         openvino=False)  # OpenVINO's rows on golden: the --dynamic-length export above
    assert all(c.passed for c in result.checks) and {c.inputs for c in result.checks} >= {"chirp 1s", "noise 1s"}


# One golden int8 export (the suite's most expensive test): --dynamic-length, whose checks include the
# fixed 5-s windows' and add 1-s and 7.3-s ones; fp16 and the fixed-window flavour are covered on the tiny
# model. (A fixed 5-s golden int8 export fails its stream check: 2026-12-01's closing note.) The blocks are
# given (--int8-blocks 1, what the search chooses here: "last 1 of 16 ... worst cosine 0.9968", after trying
# 16, 8, 4 and 2, about 75 s); the search itself runs in the tiny int8 exports of test_export.py.
@pytest.mark.parametrize("dynamic_length", [True])
@pytest.mark.parametrize("precision", ["int8"])
def test_golden_reduced_precision_meets_bounds(golden_dir, golden_model, clips_dir, tmp_path, precision,
                                               dynamic_length):
    # --dynamic-length adds checks at 1 s and 7.3 s: the coughing clip repeated to 7.3 s once drove
    # int8 calibrated on the five 5-s clips alone out of its ranges (cosine 0.94)
    result = export_onnx(checkpoint=golden_dir / "checkpoint.pt", out=tmp_path / precision, labels=LABELS,
                         precision=precision, clips=[clips_dir], dynamic_length=dynamic_length,
                         int8_blocks=1 if precision == "int8" else None)
    audio_checks = [c for c in result.checks if c.graph != "text_encoder"]
    per_flavour = (10 if dynamic_length else 6) + 1  # + the incremental graphs as a stream
    assert all(c.passed for c in audio_checks) and len(audio_checks) == per_flavour * (2 if precision == "int8" else 1)
    bound = 0.99 if precision == "int8" else 0.999
    assert min(c.min_cosine for c in audio_checks) >= bound
    # the ONNX Runtime graphs against PyTorch computed here (int8 measured: 4.7e-3, cosine 0.99941)
    assert_graphs_match_pytorch(result.out, golden_model, clips_dir, bound=1e-2, cosine=bound)
    if precision == "int8":
        assert all(c.top1_agree.split()[0].split("/")[0] != "0" for c in audio_checks if c.shape[0] == 4)
        assert {c.graph for c in audio_checks} == {"audio_encoder+classifier", "audio_encoder+classifier .trt",
                                                   "incremental", "incremental .trt"}
        for name in ("audio_encoder", "classifier", "incremental_tail"):
            ort_graph = onnx.load(str(result.out / f"{name}.onnx"))
            trt_graph = onnx.load(str(result.out / f"{name}.trt.onnx"))
            meta = {p.key: p.value for p in ort_graph.metadata_props}
            assert "layer4.2" in meta["int8_blocks"] and "ONNX Runtime" in meta["int8_scheme"]
            assert "TensorRT" in {p.key: p.value for p in trt_graph.metadata_props}["int8_scheme"]
            assert zero_points(ort_graph) and any(z.any() for z in zero_points(ort_graph))
            # TensorRT's explicit quantization takes only signed int8 with zero points 0
            assert zero_points(trt_graph) and all(z.dtype == np.int8 and not z.any() for z in zero_points(trt_graph))
            assert tensorrt_problems(trt_graph) == [] and tensorrt_problems(ort_graph)
        trtexec = (result.out / "trtexec.txt").read_text()
        assert "--onnx=audio_encoder.trt.onnx" in trtexec and "--onnx=audio_encoder.onnx" not in trtexec


def zero_points(model) -> list[np.ndarray]:
    """The zero points of a graph's QuantizeLinear nodes."""
    inits = {t.name: t for t in model.graph.initializer}
    return [onnx.numpy_helper.to_array(inits[n.input[2]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2]
