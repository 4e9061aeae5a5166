"""``--onnx DIR``: the exported classifier streams the same results as the PyTorch backend."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from audioclip.stream.cli import app

pytestmark = pytest.mark.slow  # exports a graph first
LABELS = ["cat", "dog", "siren"]



@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tiny_export_2s):
    assert json.loads((tiny_export_2s / "labels.json").read_text())["labels"] == LABELS
    return tiny_checkpoint, tiny_export_2s


def test_onnx_backend_streams_like_the_torch_backend(exported, clips_dir):
    checkpoint, export_dir = exported
    clip = clips_dir / "thunder_3-144891-B-19.wav"
    runner = CliRunner()
    common = ["--input", str(clip), "--format", "jsonl", "--window", "2", "--hop", "0.75", "-q", "--threads", "1"]
    by_torch = runner.invoke(app, ["--checkpoint", str(checkpoint), "--labels", ",".join(LABELS), *common])
    by_onnx = runner.invoke(app, ["--onnx", str(export_dir), *common])
    assert by_torch.exit_code == 0 and by_onnx.exit_code == 0, by_onnx.stderr
    rows_t = [json.loads(line) for line in by_torch.stdout.splitlines() if "t_start" in line]
    rows_o = [json.loads(line) for line in by_onnx.stdout.splitlines() if "t_start" in line]
    assert len(rows_o) == len(rows_t) == int((5.0 - 2.0) / 0.75) + 1
    for a, b in zip(rows_t, rows_o):
        assert (a["t_start"], a["t_end"], a["top"]) == (b["t_start"], b["t_end"], b["top"])
        assert list(b["probs"]) == LABELS
        assert np.abs(np.array(list(a["probs"].values())) - np.array(list(b["probs"].values()))).max() <= 1e-4
        assert np.abs(np.array(list(a["similarity"].values())) - np.array(list(b["similarity"].values()))).max() <= 1e-4


def test_onnx_export_mismatches_are_one_line_errors(exported, clips_dir):
    _, export_dir = exported
    clip = str(clips_dir / "cat_3-95694-A-5.wav")
    for extra, needle in ((["--template", "a {}"], "--template applies to --labels"),
                          (["--labels", "rain,rain"], "duplicate labels: 'rain'"),
                          (["--window", "5"], "exactly 2 s"),
                          (["--checkpoint", "partial"], "not both")):
        result = CliRunner().invoke(app, ["--onnx", str(export_dir), "--input", clip, "-q", *extra])
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr


def test_onnx_backend_streams_without_importing_torch(exported, clips_dir):
    import subprocess
    import sys

    _, export_dir = exported
    clip = str(clips_dir / "cat_3-95694-A-5.wav")
    code = (
        "import sys\n"
        "from audioclip.stream.cli import main\n"
        "from audioclip.export.incremental import OnnxIncrementalEncoder as E\n"
        "shared = []\n"
        "step = E._incremental\n"
        "E._incremental = lambda self, *a: shared.append(1) or step(self, *a)\n"
        f"sys.argv = ['audioclip-stream', '--onnx', {str(export_dir)!r}, '--input', {clip!r}, '--format', 'jsonl',"
        " '--window', '2', '-q', '--labels', 'rain,thunder']\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH', 'torch' in sys.modules, 'SHARED', len(shared), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if "t_start" in line]
    # the default hop (5 x 4488 samples): every window after the first shares the previous one's columns
    assert len(rows) == 6 and all(list(row["probs"]) == ["rain", "thunder"] for row in rows)
    assert "TORCH False SHARED 5" in done.stderr


def test_onnx_stream_gives_the_lines_of_exact_windows_and_says_what_it_saves(exported, clips_dir):
    _, export_dir = exported
    common = ["--onnx", str(export_dir), "--input", str(clips_dir / "car_horn_1-24074-A-43.wav"), "--format", "jsonl",
              "--window", "2", "--threads", "1"]
    runner = CliRunner()
    shared = runner.invoke(app, common)
    exact = runner.invoke(app, [*common, "--exact-windows", "-q"])
    assert shared.exit_code == 0 and exact.exit_code == 0, shared.stderr
    assert "overlapping windows share their front end to layer2" in shared.stderr
    rows_s = [json.loads(line) for line in shared.stdout.splitlines() if "t_start" in line]
    rows_e = [json.loads(line) for line in exact.stdout.splitlines() if "t_start" in line]
    assert len(rows_s) == len(rows_e) == 6
    for a, b in zip(rows_s, rows_e):
        assert (a["t_start"], a["t_end"], a["top"]) == (b["t_start"], b["t_end"], b["top"])
        assert np.abs(np.array(list(a["probs"].values())) - np.array(list(b["probs"].values()))).max() <= 1e-4


def test_onnx_backend_streams_new_labels_like_the_torch_backend(exported, clips_dir):
    # labels the export was not made with: embedded by text_encoder.onnx and the tokenizer
    checkpoint, export_dir = exported
    common = ["--input", str(clips_dir / "thunder_3-144891-B-19.wav"), "--format", "jsonl", "--window", "2",
              "--hop", "1", "-q", "--labels", "thunder,rain on a roof,a car horn", "--template", "the sound of {}"]
    runner = CliRunner()
    by_torch = runner.invoke(app, ["--checkpoint", str(checkpoint), *common])
    by_onnx = runner.invoke(app, ["--onnx", str(export_dir), *common])
    assert by_torch.exit_code == 0 and by_onnx.exit_code == 0, by_onnx.stderr
    rows_t = [json.loads(line) for line in by_torch.stdout.splitlines() if "t_start" in line]
    rows_o = [json.loads(line) for line in by_onnx.stdout.splitlines() if "t_start" in line]
    assert len(rows_o) == len(rows_t) == 4
    for a, b in zip(rows_t, rows_o):
        assert list(b["probs"]) == ["thunder", "rain on a roof", "a car horn"] and a["top"] == b["top"]
        assert np.abs(np.array(list(a["similarity"].values())) - np.array(list(b["similarity"].values()))).max() <= 1e-4


def test_load_classifier_is_one_interface_over_both_backends(exported, clips_dir):
    import subprocess
    import sys

    import soundfile as sf

    import audioclip

    checkpoint, export_dir = exported
    audio = sf.read(clips_dir / "cat_3-95694-A-5.wav", dtype="float32")[0][:2 * 44100]
    by_torch = audioclip.load_classifier(checkpoint=checkpoint, labels=LABELS, threads=1)
    by_onnx = audioclip.load_classifier(onnx=export_dir, threads=1)
    assert list(by_torch.labels) == list(by_onnx.labels) == LABELS
    (p_t, s_t), (p_o, s_o) = by_torch.scores(audio[None]), by_onnx.scores(audio[None])
    np.testing.assert_allclose(np.asarray(s_o), s_t.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(p_o), p_t.numpy(), atol=1e-4)
    code = (f"import sys, audioclip\nc = audioclip.load_classifier(onnx={str(export_dir)!r})\n"
            "print(c.labels, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"{LABELS} False", done.stderr


def test_a_truncated_graph_is_one_line_naming_the_file(exported, clips_dir, tmp_path):
    """An interrupted copy of an export: ONNX Runtime's InvalidProtobuf becomes one ``error:`` line."""
    import shutil

    _, export_dir = exported
    copy = tmp_path / "copy"
    shutil.copytree(export_dir, copy)
    graph = copy / "classifier.onnx"
    graph.write_bytes(graph.read_bytes()[:graph.stat().st_size // 2])
    result = CliRunner().invoke(app, ["--onnx", str(copy), "--input", str(clips_dir / "cat_3-95694-A-5.wav"), "-q"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {graph}: ONNX Runtime cannot load this graph")
    assert "InvalidProtobuf" in lines[0] and "audioclip-export onnx" in lines[0]
