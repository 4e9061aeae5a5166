"""ONNX export on the tiny model: graph structure, equivalence with PyTorch, the runtime wrapper, bad input."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from audioclip.export.cli import app
from audioclip.export.exporter import (
    DYNAMIC_MIN_SAMPLES,
    MAX_BATCH,
    MAX_CALIBRATION_CLIPS,
    TRT_MAX_BATCH,
    ExportError,
    calibration_windows,
    export_onnx,
)
from audioclip.export.graphs import FrontEnd, max_pool_half, max_pool_half_any_width
from audioclip.export.incremental import FRONT_FILE, STAGE_FILES, IncrementalGraphs, OnnxIncrementalEncoder
from audioclip.export.layout import widen_grouped_convs
from audioclip.export.precision import choose_int8_blocks, int8_nodes, longest_passing, residual_blocks
from audioclip.export.runtime import OnnxClassifier
from audioclip.export.shared import SHARED_WEIGHTS_FILE
from audioclip.export.trt_check import tensorrt_problems
from audioclip.export.verify import load_clips
from audioclip.model import SAMPLE_RATE, ZeroShotClassifier, atomic_save, finetuned_checkpoint, tokenize
from audioclip.model.esresnext import adaptive_max_pool2d_exact
from audioclip.model.labels import ParameterError

from helpers import make_tiny_model

# Most of these export and verify ONNX graphs (tens of seconds each, a module fixture most of them
# share): out of the quick loop, in CI.
pytestmark = pytest.mark.slow

LABELS = ["siren", "dog bark", "rain"]
FORBIDDEN_OPS = {"STFT", "DFT", "Atan", "Loop", "If", "Scan", "NonZero", "Unique", "SequenceConstruct"}


@pytest.mark.parametrize("height", [86, 43, 22, 11])
def test_max_pool_half_equals_adaptive_pool_on_odd_and_even_widths(height):
    torch.manual_seed(height)
    for width in range(1, 42):
        x = torch.randn(2, 3, height, width)
        expected = F.adaptive_max_pool2d(x, ((height + 1) // 2, (width + 1) // 2))
        assert torch.equal(max_pool_half(x), expected), (height, width)
        assert torch.equal(max_pool_half_any_width(x), expected), (height, width)  # the --dynamic-length form
        assert torch.equal(adaptive_max_pool2d_exact(x, expected.shape[-2:]), expected)


@pytest.mark.parametrize("as_conv", [False, True])
def test_front_end_graph_equals_eager_spectrogram(tiny_model, as_conv):
    front = FrontEnd(tiny_model.audio, as_conv=as_conv)
    for n in (1654, 1655, 10070, 44100, 220500):
        x = torch.rand(2, n) * 2 - 1
        with torch.no_grad():
            got, expected = front(x), tiny_model.audio.spectrogram_db(x)
        assert got.shape == expected.shape, n
        # same operations; BLAS may pick another kernel for a one-frame product (``@`` vs ``F.linear``).
        # The conv form folds the window into the kernel: other roundings (measured up to 4.7e-3 dB),
        # held to the golden data's dB bound for a float32 port (1e-2 dB).
        torch.testing.assert_close(got, expected, atol=1e-2 if as_conv else 1e-3, rtol=0, msg=f"{n} samples")


@pytest.fixture(scope="module")
def dynamic_export(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "dyn"
    return export_onnx(checkpoint=tiny_checkpoint, out=out, labels=LABELS, template="the sound of {}",
                       dynamic_length=True, window=2.0)


def test_export_writes_every_file_atomically(dynamic_export):
    out = dynamic_export.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["audio_encoder.onnx", "classifier.onnx", "text_encoder.onnx", *STAGE_FILES, SHARED_WEIGHTS_FILE,
         "labels.json", "trtexec.txt", "README.txt", "background.npz",
         *(["openvino.json"] if importlib.util.find_spec("openvino") else [])])  # what OpenVINO verified
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"
    labels = json.loads((out / "labels.json").read_text())
    assert "OnnxClassifier('THIS_FOLDER', labels=['dog', 'rain']" in (out / "README.txt").read_text()
    assert labels["labels"] == LABELS and labels["template"] == "the sound of {}"
    assert all(c.passed for c in dynamic_export.checks)
    assert {c.inputs.split()[-1] for c in dynamic_export.checks if c.graph == "audio_encoder+classifier"} == {
        "2s", "1s", "7.3s"}
    assert {c.shape[0] for c in dynamic_export.checks} >= {1, 4}


def test_the_audio_graphs_store_the_weights_they_share_once(dynamic_export):
    """classifier.onnx is the encoder plus the labels: inline, an export held every encoder weight twice."""
    out = dynamic_export.out
    graphs = ("audio_encoder.onnx", "classifier.onnx")
    for name in graphs:
        tensors = onnx.load(str(out / name), load_external_data=False).graph.initializer
        big = [t for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) >= 1024]
        assert big and all(t.data_location == onnx.TensorProto.EXTERNAL for t in big), name
        assert {e.value for t in big for e in t.external_data if e.key == "location"} == {SHARED_WEIGHTS_FILE}
    weights = sum(onnx.numpy_helper.to_array(t).nbytes
                  for t in onnx.load(str(out / "audio_encoder.onnx")).graph.initializer)
    stored = sum((out / name).stat().st_size for name in (*graphs, SHARED_WEIGHTS_FILE))
    assert stored < 1.1 * weights, (stored, weights)  # was 2 x weights
    assert f"{SHARED_WEIGHTS_FILE}: the weights the audio graphs hold alike" in (out / "README.txt").read_text()


@pytest.mark.parametrize("name", ["audio_encoder.onnx", "classifier.onnx", "text_encoder.onnx", *STAGE_FILES])
def test_graphs_are_tensorrt_ready(dynamic_export, name):
    model = onnx.load(str(dynamic_export.out / name))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {n.op_type for n in model.graph.node}
    assert not ops & FORBIDDEN_OPS
    assert tensorrt_problems(model) == []
    dims = model.graph.input[0].type.tensor_type.shape.dim
    if name in STAGE_FILES:  # one window at a time; frames (the front end) or columns of any number
        assert dims[0].dim_value == 1 and dims[1 if name == FRONT_FILE else 3].dim_param
        assert f"--onnx={name} " in (dynamic_export.out / "trtexec.txt").read_text()
    else:
        assert dims[0].dim_param, "batch axis must be dynamic"
    if name not in ("text_encoder.onnx", *STAGE_FILES):
        assert dims[1].dim_param, "samples must be dynamic with --dynamic-length"
        assert "MatMul" in ops  # the learned transform, as constant weights
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == LABELS
    assert meta["sample_rate"] == str(SAMPLE_RATE) and meta["window_samples"] == "dynamic"
    assert meta["embedding_size"] == "32" and meta["precision"] == "fp32" and meta["trunk_blocks"] == "[1, 1]"
    assert len(meta["source_sha256"]) == 64 and meta["version"]


@pytest.mark.slow
def test_fixed_window_graph_has_static_length(tiny_checkpoint, tmp_path):
    result = export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "fixed", labels=LABELS, window=0.5)
    model = onnx.load(str(result.out / "audio_encoder.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == round(0.5 * SAMPLE_RATE)
    clf = OnnxClassifier(result.out)
    with pytest.raises(ValueError, match="exactly 22050"):
        clf.scores(np.zeros(30000, np.float32))
    assert "--minShapes=waveform:1x22050" in (result.out / "trtexec.txt").read_text()
    # a known width takes one pooling form per gate: the stem's pool and one per halving gate (3)
    assert [n.op_type for n in model.graph.node].count("MaxPool") == 4


def test_dynamic_length_graph_pools_both_parities(dynamic_export):
    ops = [n.op_type for n in onnx.load(str(dynamic_export.out / "audio_encoder.onnx")).graph.node]
    assert ops.count("MaxPool") == 1 + 2 * 3  # the stem's pool; both forms for each halving gate


def test_longest_passing_bisects_to_the_last_passing_count():
    for n, answer in [(16, 6), (16, 16), (16, 0), (3, 1), (1, 1), (1, 0)]:
        calls = []

        def cosine_of(k, answer=answer, calls=calls):
            calls.append(k)
            return 0.999 - 0.001 * max(k - answer, 0)

        assert longest_passing(n, cosine_of, 0.999) == (answer, 0.999 if answer else 1.0), (n, answer)
        assert calls[0] == n and len(calls) <= 1 + math.ceil(math.log2(n + 1)), calls
        assert 0 not in calls


def test_int8_nodes_are_the_pointwise_convolutions_of_the_chosen_blocks(dynamic_export):
    model = onnx.load(str(dynamic_export.out / "audio_encoder.onnx"))
    blocks = residual_blocks(model)
    assert blocks[0] == (1, 0) and blocks == sorted(blocks) and {b[0] for b in blocks} == {1, 2, 3, 4}
    weights = {t.name: tuple(t.dims) for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    chosen = int8_nodes(model, blocks[-1:])
    stage, block = blocks[-1]
    assert chosen and all(f".layer{stage}.{block}." in nodes[c].input[1] for c in chosen)
    assert all(weights[nodes[c].input[1]][2:] == (1, 1) for c in chosen)
    assert not [c for c in chosen if ".att" in nodes[c].input[1]]
    every = int8_nodes(model, blocks)
    grouped = [n for n in model.graph.node if n.op_type == "Conv" and ".layer" in n.input[1]
               and weights[n.input[1]][2:] == (3, 3)]
    assert grouped and not {n.name for n in grouped} & set(every)


@pytest.mark.parametrize("seconds,batch", [(0.25, 1), (1.0, 4), (7.3, 1)])
def test_onnx_classifier_matches_zero_shot_classifier(dynamic_export, seconds, batch):
    reference = ZeroShotClassifier(make_tiny_model(), LABELS, "the sound of {}")
    clf = OnnxClassifier(dynamic_export.out, threads=1)
    assert clf.labels == reference.labels and clf.template == reference.template
    assert clf.logit_scale == pytest.approx(reference.logit_scale)
    x = (np.random.default_rng(1).random((batch, int(seconds * SAMPLE_RATE)), dtype=np.float32) * 2 - 1) * 0.5
    probs, sims = clf.scores(x)
    ref_probs, ref_sims = (t.numpy() for t in reference.scores(x))
    assert probs.shape == sims.shape == (batch, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    np.testing.assert_allclose(clf.probs(x[0]), ref_probs[:1], atol=1e-5)


def test_onnx_classifier_embeds_new_labels_like_zero_shot_classifier(dynamic_export):
    labels, template = ["a door slams", "birds sing", "siren", "rain"], "a recording of {}"
    reference = ZeroShotClassifier(make_tiny_model(), labels, template)
    clf = OnnxClassifier(dynamic_export.out, labels=labels, template=template, threads=1)
    assert clf.labels == labels and clf.template == template and clf.logit_scale == pytest.approx(reference.logit_scale)
    np.testing.assert_allclose(clf.label_embeddings, reference.label_embeddings.numpy(), atol=1e-5)
    x = (np.random.default_rng(2).random((2, SAMPLE_RATE), dtype=np.float32) * 2 - 1) * 0.5
    probs, sims = clf.scores(x)
    ref_probs, ref_sims = (t.numpy() for t in reference.scores(x))
    assert probs.shape == (2, 4) and probs.dtype == sims.dtype == np.float32
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
    np.testing.assert_allclose(clf.logits(x), ref_sims * reference.logit_scale, atol=1e-4)
    # no template: "{}", as the PyTorch classifier
    assert OnnxClassifier(dynamic_export.out, labels=["rain"]).template == "{}"


@pytest.mark.parametrize("kwargs,match", [
    ({"template": "the sound of {}"}, "a template applies to new labels"),
    ({"labels": ["rain", "siren", "rain"]}, "duplicate labels: 'rain'"),
    ({"labels": ["rain"], "template": "no slot"}, "has no '{}'"),
    ({"labels": []}, "no labels given"),
])
def test_onnx_classifier_refuses_bad_labels(dynamic_export, kwargs, match):
    with pytest.raises(ValueError, match=match):
        OnnxClassifier(dynamic_export.out, **kwargs)


@pytest.mark.parametrize("labels", [None, ["rain"]])
def test_onnx_classifier_names_a_missing_folder(tmp_path, labels):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'nope'}: no such folder"):
        OnnxClassifier(tmp_path / "nope", labels=labels)


def test_verification_catches_a_classifier_graph_whose_head_is_wrong(dynamic_export):
    from audioclip.export.verify import check_audio

    batches = [("noise 1s", (np.random.default_rng(3).random((1, SAMPLE_RATE), dtype=np.float32) - 0.5))]
    right = ZeroShotClassifier(make_tiny_model(), LABELS, "the sound of {}")
    wrong = ZeroShotClassifier(make_tiny_model(), LABELS[::-1], "the sound of {}")  # the graph holds LABELS
    (good,) = check_audio(graph_dir=dynamic_export.out, precision="fp32", classifier=right, batches=batches)
    (bad,) = check_audio(graph_dir=dynamic_export.out, precision="fp32", classifier=wrong, batches=batches)
    assert good.passed and bad.max_abs_diff == good.max_abs_diff  # the encoder is fine either way
    assert not bad.passed and "classifier head off by" in bad.bound


def test_text_encoder_matches_pytorch(dynamic_export):
    from audioclip.export.runtime import session

    model = make_tiny_model()
    tokens = tokenize(["a dog barks", "rain on a roof", "siren"])
    (emb,) = session(dynamic_export.out / "text_encoder.onnx", threads=1).run(None, {"tokens": tokens.numpy()})
    with torch.no_grad():
        ref = F.normalize(model.encode_tokens(tokens), dim=-1).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-5)


@pytest.mark.parametrize("bad,match", [
    (np.full(20000, np.nan, np.float32), "NaN"),
    (np.zeros((1, 2, 20000), np.float32), "2 channels"),
    (np.zeros(5000, np.float32), f"fewer than this graph takes \\({DYNAMIC_MIN_SAMPLES}"),
    (np.zeros((1, 1, 1, 20000), np.float32), "shaped"),
    (np.zeros(20000, np.int32), "dtype int32"),
])
def test_onnx_classifier_rejects_bad_waveforms(dynamic_export, bad, match):
    with pytest.raises(ValueError, match=match):
        OnnxClassifier(dynamic_export.out).scores(bad)


def test_runtime_imports_without_torch():
    code = ("import sys\nfrom audioclip.export.runtime import OnnxClassifier\nimport audioclip.export\n"
            "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_new_labels_need_no_torch(dynamic_export):
    # torch made unimportable: the tokenizer and text_encoder.onnx embed the labels on their own
    code = ("import sys\nsys.modules['torch'] = None\nimport numpy as np\n"
            "from audioclip.export.runtime import OnnxClassifier\n"
            f"clf = OnnxClassifier({str(dynamic_export.out)!r}, labels=['rain', 'a dog barks'], threads=1)\n"
            "probs = clf.probs(np.zeros(44100, np.float32))\nprint(probs.shape, round(float(probs.sum()), 4))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "(1, 2) 1.0", done.stderr


def test_finetuned_head_exports_its_own_labels_without_text_encoder(tmp_path):
    model = make_tiny_model(seed=3)
    embeddings = torch.randn(4, 32)
    path = tmp_path / "head.pt"
    atomic_save(finetuned_checkpoint(model, ["cat", "dog", "bird", "car"], embeddings, mode="cooperative",
                                     template="a {}", source_name="tiny", source_sha256="0" * 64), path)
    result = export_onnx(checkpoint=path, out=tmp_path / "out", window=2.0, precision="fp16")
    assert not (result.out / "text_encoder.onnx").exists() and "no text tower" in result.notes[0]
    # the incremental graphs at fp16, as a stream: the tail scores the head's own labels
    stream = [c for c in result.checks if c.graph == "incremental"]
    assert len(stream) == 1 and all(c.passed and c.precision == "fp16" for c in stream)
    assert "no text tower" in (result.out / "README.txt").read_text()
    assert "labels=[" not in (result.out / "README.txt").read_text()  # no new labels without a text encoder
    clf = OnnxClassifier(result.out)
    assert clf.labels == ["cat", "dog", "bird", "car"] and clf.template == "a {}" and clf.precision == "fp16"
    with pytest.raises(ValueError, match="has no text_encoder.onnx .*it scores only the labels it was exported with"):
        OnnxClassifier(result.out, labels=["rain"])
    assert all(c.passed and c.min_cosine >= 0.999 for c in result.checks)
    model16 = onnx.load(str(result.out / "audio_encoder.onnx"))
    assert onnx.TensorProto.FLOAT16 in {t.data_type for t in model16.graph.initializer}
    # the front end (a 1-D Conv in reduced-precision graphs) stays fp32: its kernel is not converted
    assert [t.data_type for t in model16.graph.initializer if len(t.dims) == 3] == [onnx.TensorProto.FLOAT]
    assert [n for n in model16.graph.node if n.op_type == "Conv"][0].input[1].endswith("front.kernel")
    atomic_save(finetuned_checkpoint(model, ["cat"], embeddings[:1], mode="linear"), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="mode 'linear'"):
        export_onnx(checkpoint=tmp_path / "linear.pt", out=tmp_path / "out2")
    with pytest.raises(ParameterError, match="no text tower"):
        export_onnx(checkpoint=path, out=tmp_path / "out3", labels=["x"])
    assert not (tmp_path / "out2").exists() and not (tmp_path / "out3").exists()


def test_failed_export_leaves_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from audioclip.export import exporter

    def broken(tmp, **kwargs):
        (tmp / "audio_encoder.onnx").write_bytes(b"half")
        raise ExportError("simulated failure")

    monkeypatch.setattr(exporter, "_write_graphs", broken)
    with pytest.raises(ExportError, match="simulated"):
        export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "out", labels=LABELS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_output_is_not_buried_in_torch_notices_about_torchvision(tiny_checkpoint, tmp_path, caplog):
    # torch's exporter logs 4 such lines per graph where torchvision is absent (as in CI)
    with caplog.at_level(logging.WARNING):
        export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "out", labels=LABELS, window=0.5)
    assert not [r for r in caplog.records if "torchvision" in r.getMessage()]
    # the filter is gone afterwards: torch's other warnings from that module still come through
    assert not logging.getLogger("torch.onnx._internal.exporter._registration").filters


def test_an_out_folder_the_file_system_refuses_is_a_one_line_error(tiny_checkpoint, tmp_path, monkeypatch):
    # as root, or on a read-only or virtual file system, os.access says yes and creation still fails
    from audioclip.export import exporter

    def refused(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(exporter.tempfile, "mkdtemp", refused)
    with pytest.raises(ExportError, match=f"{tmp_path / 'out'}: cannot write here \\(Permission denied\\)"):
        export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "out", labels=LABELS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "nosuchrelease"], "unknown checkpoint 'nosuchrelease'"),
    (["--labels", "siren,dog,siren"], "duplicate labels: 'siren'"),
    (["--labels", "siren,,dog"], "is empty"),
    (["--window", "0.01"], "shorter than one FBSP frame"),
    (["--labels", "a", "--precision", "int8"], "int8 needs real recordings"),
    (["--opset", "13"], "opset 13 is not supported"),
    (["--opset", "17"], "opset 17 is not supported"),  # torch would silently keep 18
])
def test_cli_bad_input_is_one_line_error(tiny_checkpoint, tmp_path, args, message):
    base = {"--checkpoint": str(tiny_checkpoint), "--labels": "siren,dog", "--out": str(tmp_path / "out")}
    for key in args[::2]:
        base.pop(key, None)
    argv = ["onnx", *[x for kv in base.items() for x in kv], *args]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_refuses_non_empty_out_without_force(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = CliRunner().invoke(app, ["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--labels", "a"])
    assert result.exit_code == 2 and "pass --force" in result.output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    result = CliRunner().invoke(app, ["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(out / "keep.txt"),
                                      "--labels", "a"])
    assert result.exit_code == 2 and "keep.txt: exists and is not a folder" in result.output
    if os.geteuid() == 0:
        return  # root writes into a read-only folder: the export would run (a minute) and succeed
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        result = CliRunner().invoke(app, ["onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(ro / "x"),
                                          "--labels", "a"])
        assert result.exit_code == 2 and "cannot write here" in result.output and not (ro / "x").exists()
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("channels,groups", [(32, 8), (64, 8), (48, 3), (8, 8), (24, 6)])
def test_widened_grouped_convs_compute_the_same(tmp_path, channels, groups):
    torch.manual_seed(channels + groups)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, groups=groups, stride=2).eval()
    x = torch.randn(2, channels, 9, 11)
    path = tmp_path / "conv.onnx"
    torch.onnx.export(conv, (x,), str(path), dynamo=True, external_data=False, input_names=["x"])
    model = onnx.load(str(path))
    per_group = channels // groups
    # depthwise, already 16 or more, or groups that do not merge evenly into 16 channels: left alone
    left_alone = per_group == 1 or per_group >= 16 or groups % (16 // per_group) != 0
    assert widen_grouped_convs(model) == (0 if left_alone else 1)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    group = next(a.i for a in node.attribute if a.name == "group")
    assert group == (groups if left_alone else channels // 16)
    import onnxruntime as ort

    ort_session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = ort_session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, conv(x).numpy(), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_int8_export_refuses_a_checkpoint_too_sensitive_for_8_bits(tiny_checkpoint, clips_dir, tmp_path, monkeypatch):
    from audioclip.export import precision

    choose = precision.choose_int8_blocks
    tried = []

    def unreachable_bound(*args, **kwargs):  # no quantised block can keep a cosine above 1
        tried.append(args)
        return choose(*args, **kwargs, min_cosine=1.5)

    monkeypatch.setattr(precision, "choose_int8_blocks", unreachable_bound)
    with pytest.raises(ExportError, match="int8 loses too much on this checkpoint"):
        export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "int8", labels=LABELS, precision="int8",
                    clips=[clips_dir], window=0.5)
    assert tried and not list(tmp_path.iterdir()), "nothing may be left behind"


@pytest.mark.slow
def test_a_gpu_provider_that_does_not_load_leaves_the_cpu_checks(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    import onnxruntime as ort

    from audioclip.export import exporter

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has no CUDA provider to fail")
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("a GPU is present: the CUDA provider would load")
    monkeypatch.setattr(exporter, "gpu_providers", lambda: ["CUDAExecutionProvider"])
    result = export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "out", labels=LABELS, window=0.5)
    audio = [c for c in result.checks if c.graph != "text_encoder"]
    assert audio and all(c.passed and "[" not in c.graph for c in audio)
    assert "CUDAExecutionProvider did not load" in caplog.text


def test_int8_calibration_windows_hold_each_clip_and_the_seams_between_clips():
    rng = np.random.default_rng(0)
    clips = [(f"c{i}", rng.uniform(-1, 1, n).astype(np.float32)) for i, n in enumerate([3000, 5000, 4000])]
    windows = calibration_windows(clips, 2000)
    assert windows.shape == (3 + 12, 2000) and windows.dtype == np.float32
    for i, (_, audio) in enumerate(clips):
        np.testing.assert_array_equal(windows[i], audio[:2000])
    stream = np.concatenate([a for _, a in clips])
    np.testing.assert_array_equal(windows[3 + 1], stream[1000:3000])  # across the seam of clips 0 and 1
    many = [(f"c{i}", rng.uniform(-1, 1, 2000).astype(np.float32)) for i in range(40)]
    assert len(calibration_windows(many, 2000)) == MAX_CALIBRATION_CLIPS


@pytest.mark.slow
def test_int8_from_one_clip_warns_that_its_accuracy_elsewhere_is_unmeasured(tiny_checkpoint, clips_dir, tmp_path,
                                                                             monkeypatch):
    from audioclip.export import precision

    choose, searches = precision.choose_int8_blocks, []

    def recorded(*args, **kwargs):
        blocks, cosine = choose(*args, **kwargs)
        searches.append((kwargs["tensorrt"], kwargs["most"], blocks))
        return blocks, cosine

    monkeypatch.setattr(precision, "choose_int8_blocks", recorded)
    result = export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "int8", labels=LABELS, precision="int8",
                         clips=[clips_dir / "cat_3-95694-A-5.wav"], window=0.5)
    assert "calibrated and checked on 1 clip(s) only" in result.notes[0]
    graphs = {"audio_encoder.onnx", "audio_encoder.trt.onnx", "classifier.onnx", "classifier.trt.onnx"}
    assert graphs <= set(result.files)
    # 0.5-s windows share no columns at any hop: no incremental graphs, and a note that says why
    assert not set(STAGE_FILES) & set(result.files)
    assert ("no incremental graphs: 0.5-s windows are too short to share columns at any hop, so streams compute "
            "them whole") in result.notes
    for name in result.files:
        if name.endswith(".trt.onnx"):
            assert tensorrt_problems(onnx.load(str(result.out / name))) == [], name
    readme = (result.out / "README.txt").read_text()
    assert all(c.passed for c in result.checks) and "1 clip(s) only" in readme and '"int8_blocks"' in readme
    # the TensorRT form's search is bounded by the blocks the ONNX Runtime form keeps
    assert [(tensorrt, most) for tensorrt, most, _ in searches] == [(False, None), (True, len(searches[0][2]))]


@pytest.mark.slow
def test_the_int8_search_tries_no_more_trailing_blocks_than_it_is_given(dynamic_export, clips_dir, caplog):
    caplog.set_level(logging.INFO, logger="audioclip.export.precision")
    graph = dynamic_export.out / "audio_encoder.onnx"
    calibration = calibration_windows(load_clips([clips_dir]), 2 * SAMPLE_RATE)[:3]
    blocks, cosine = choose_int8_blocks(graph, calibration, threads=2, tensorrt=True, most=2)
    tries = [re.match(r"int8 \(TensorRT\): last (\d+) of 4 residual", r.getMessage()) for r in caplog.records]
    assert [int(m[1]) for m in tries if m] == [2]  # without `most` the search starts at all 4
    assert blocks == residual_blocks(onnx.load(str(graph), load_external_data=False))[-2:] and cosine >= 0.995


def test_cli_shows_progress_by_default_and_records_where_the_checkpoint_is(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_checkpoint.parent)  # a relative --checkpoint, as a user types it
    result = CliRunner().invoke(app, ["onnx", "--checkpoint", tiny_checkpoint.name, "--out", str(tmp_path / "out"),
                                      "--labels", "siren,dog", "--window", "0.5"])
    assert result.exit_code == 0, result.output
    assert "INFO exporting audio_encoder.onnx" in result.output and "INFO exporting classifier.onnx" in result.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "out" / "classifier.onnx")).metadata_props}
    assert meta["source"] == str(tiny_checkpoint.resolve())
    assert f"--maxShapes=waveform:{TRT_MAX_BATCH}x" in (tmp_path / "out" / "trtexec.txt").read_text()
    quiet = CliRunner().invoke(app, ["onnx", "--checkpoint", tiny_checkpoint.name, "--out", str(tmp_path / "q"),
                                     "--labels", "siren,dog", "--window", "0.5", "-q"])
    assert quiet.exit_code == 0 and "INFO" not in quiet.output


def test_the_docs_give_the_batch_sizes_the_export_writes():
    root = Path(__file__).resolve().parents[1]
    for doc in (root / "README.md", root / "docs" / "export.md"):
        text = " ".join(doc.read_text().split())
        assert f"batches up to {MAX_BATCH} on ONNX Runtime, up to {TRT_MAX_BATCH} in `trtexec.txt`" in text, doc


def test_a_head_fine_tuned_on_other_clip_lengths_than_the_window_is_noted(tmp_path):
    model = make_tiny_model(seed=3)
    path = tmp_path / "one-second.pt"
    atomic_save(finetuned_checkpoint(model, ["cat", "dog"], torch.randn(2, 32), mode="cooperative",
                                     clip_samples=SAMPLE_RATE), path)
    result = export_onnx(checkpoint=path, out=tmp_path / "out", window=0.5)
    assert f"{path} was fine-tuned on 1-s clips but these graphs take 0.5-s windows: pass --window 1 to match" \
        in result.notes
    assert "pass --window 1 to match" in (result.out / "README.txt").read_text()


# -- the incremental graphs: overlapping windows share the front end to layer2 on ONNX Runtime ---------------------


@pytest.fixture(scope="module")
def joined(clips_dir) -> np.ndarray:
    """The five real clips joined into one 25-s stream."""
    import soundfile as sf

    return np.concatenate([sf.read(p, dtype="float32")[0] for p in sorted(clips_dir.glob("*.wav"))])


@pytest.fixture(scope="module")
def signals(joined, clips_dir) -> dict[str, np.ndarray]:
    """The joined clips, and a 14-s file: alarm clock, cat, then 4 s of coughing."""
    import soundfile as sf

    names = ("alarm_clock_3-120526-B-37.wav", "cat_3-95694-A-5.wav", "coughing_1-58792-A-24.wav")
    fourteen = np.concatenate([sf.read(clips_dir / n, dtype="float32")[0] for n in names])[:14 * SAMPLE_RATE]
    return {"joined": joined, "fourteen": fourteen}


@pytest.fixture(scope="module")
def whole_graphs(dynamic_export):
    from audioclip.export.runtime import session

    return (session(dynamic_export.out / "audio_encoder.onnx", threads=2),
            session(dynamic_export.out / "classifier.onnx", threads=2))


@pytest.mark.parametrize("signal,window,strides", [("joined", 5.0, 1), ("joined", 5.0, 2), ("joined", 5.0, 5),
                                                   ("joined", 5.0, 10), ("joined", 3.0, 1), ("joined", 3.0, 5),
                                                   ("fourteen", 5.0, 2), ("fourteen", 3.0, 10)])
def test_incremental_graphs_give_every_window_of_the_real_clips_as_the_whole_window_graphs(
        dynamic_export, whole_graphs, signals, signal, window, strides):
    """Within 1e-4 relative of audio_encoder.onnx, the same top-1 label as classifier.onnx, every window."""
    encoder_graph, classifier_graph = whole_graphs
    joined = signals[signal]
    n = int(window * SAMPLE_RATE)
    hop = strides * 4488
    encoder = OnnxIncrementalEncoder(IncrementalGraphs(dynamic_export.out, threads=2), n, hop_samples=hop)
    starts = range(0, len(joined) - n + 1, hop)
    for start in starts:
        x = joined[start:start + n]
        got = encoder.encode(x, start)
        (expected,) = encoder_graph.run(None, {"waveform": x[None]})
        _, probs = classifier_graph.run(None, {"waveform": x[None]})
        assert np.abs(got.embedding - expected).max() / np.abs(expected).max() <= 1e-4, start
        assert got.probs.argmax() == probs.argmax(), start
        np.testing.assert_allclose(got.probs, probs, atol=1e-4)
    assert (encoder.full_windows, encoder.incremental_windows) == (1, len(starts) - 1)


def test_incremental_graphs_after_a_dropped_window_and_a_reconnect_equal_whole_windows(dynamic_export, whole_graphs,
                                                                                        joined):
    encoder_graph, _ = whole_graphs
    n, hop = 3 * SAMPLE_RATE, 5 * 4488
    encoder = OnnxIncrementalEncoder(IncrementalGraphs(dynamic_export.out, threads=2), n, hop_samples=hop)
    other = joined[::-1].copy()  # after a reconnect the stream's samples at a start are others
    plan = [(0, joined), (hop, joined), (3 * hop, joined), (4 * hop, other), (5 * hop, other)]
    for start, signal in plan:
        x = signal[start:start + n]
        (expected,) = encoder_graph.run(None, {"waveform": x[None]})
        got = encoder.encode(x, start).embedding
        assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4, start
    # the skipped window still shares (two hops on); the reconnect's first window is whole
    assert (encoder.full_windows, encoder.incremental_windows) == (2, 3)


def test_incremental_graphs_run_on_the_widths_their_tensorrt_profiles_cover(dynamic_export, joined):
    """Every stage graph's input during a stream lies within the min / max widths written in trtexec.txt."""
    import re

    graphs = IncrementalGraphs(dynamic_export.out, threads=2)
    seen: dict[str, set] = {}
    run = graphs.run

    def recording(file, x):
        seen.setdefault(file, set()).add(x.shape[1] if file == FRONT_FILE else x.shape[-1])
        return run(file, x)

    graphs.run = recording
    n = 2 * SAMPLE_RATE  # the export's window: the profiles' "opt" is its whole width
    for strides in (1, 3, 7):
        encoder = OnnxIncrementalEncoder(graphs, n, hop_samples=strides * 4488)
        for start in range(0, 6 * SAMPLE_RATE, strides * 4488):
            encoder.encode(joined[start:start + n], start)
    lines = (dynamic_export.out / "trtexec.txt").read_text().splitlines()
    for file, widths in seen.items():
        line = next(x for x in lines if f"--onnx={file} " in x)
        axis = 1 if file == FRONT_FILE else -1
        lo, opt, hi = (int(re.search(f"--{kind}Shapes=[a-z0-9]+:([0-9x]+)", line)[1].split("x")[axis])
                       for kind in ("min", "opt", "max"))
        assert lo <= min(widths) and max(widths) <= hi and max(widths) == opt, (file, sorted(widths), lo, opt, hi)


def test_the_export_verifies_the_incremental_graphs_as_a_stream(dynamic_export):
    rows = [c for c in dynamic_export.checks if c.graph == "incremental"]
    assert [r.inputs.split()[-1] for r in rows] == ["0.5088s"] and all(r.passed for r in rows)
    # every window of the four 2-s check signals played one after another
    assert rows[0].shape == (len(range(0, 6 * SAMPLE_RATE + 1, 5 * 4488)), 2 * SAMPLE_RATE)
    readme = (dynamic_export.out / "README.txt").read_text()
    assert "incremental_tail.onnx: a whole window's layer2 -> embedding, logits, probs" in readme
    assert "incremental  " in readme  # the verification table's rows


def test_incremental_graphs_need_no_torch(dynamic_export, joined):
    code = (
        "import sys, numpy as np\n"
        "from audioclip.export.runtime import OnnxClassifier\n"
        "from audioclip.export.incremental import OnnxIncrementalEncoder\n"
        f"clf = OnnxClassifier({str(dynamic_export.out)!r}, threads=1)\n"
        "enc = OnnxIncrementalEncoder(clf.incremental_graphs(), 88200, hop_samples=4488)\n"
        "x = np.sin(np.arange(200000) / 7.0).astype(np.float32) * 0.3\n"
        "outs = [enc.encode(x[s:s + 88200], s) for s in range(0, 40000, 4488)]\n"
        "print(enc.incremental_windows, clf.scores_of_tail(outs[-1])[0].shape, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["8", "(1,", "3)", "False"]


def test_an_export_without_incremental_graphs_streams_whole_windows_and_says_why(dynamic_export, tmp_path, caplog):
    import shutil

    from audioclip.stream.config import StreamConfig
    from audioclip.stream.incremental import window_scorer

    old = tmp_path / "old"
    shutil.copytree(dynamic_export.out, old)
    for name in STAGE_FILES:
        (old / name).unlink()
    with caplog.at_level(logging.INFO, logger="audioclip.stream.incremental"):
        assert window_scorer(OnnxClassifier(old, threads=1), StreamConfig(window=2.0)) is None
    assert "has no incremental graphs" in caplog.text and "export it again" in caplog.text
    assert window_scorer(OnnxClassifier(dynamic_export.out, threads=1), StreamConfig(window=2.0)) is not None
