"""The OpenVINO runtime for exports (issue 22): the same results as ONNX Runtime, the export's record of what
passed, the one-line errors, the monitor on it, and the compile cache across process starts.

Everything runs on the tiny model's 2-s export (``tiny_export_2s``, shared with the streaming tests), whose
export verified OpenVINO as every export does now.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audioclip.audio import load_audio
from audioclip.model.constants import SAMPLE_RATE

from helpers import require_module, run_monitor

require_module("openvino", "the OpenVINO runtime (the openvino extra)")

from audioclip.export import openvino as ovr  # noqa: E402
from audioclip.export.incremental import (  # noqa: E402
    FRONT_FILE,
    LAYER1_FILE,
    STEM_FILE,
    TAIL_FILE,
    IncrementalGraphs,
    layer2_file,
)
from audioclip.export.runtime import OnnxClassifier, embed_labels  # noqa: E402

WINDOW = 2 * SAMPLE_RATE
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def windows(clips_dir) -> np.ndarray:
    """2-s windows of each real clip, from its loudest second on."""
    out = []
    for f in sorted(clips_dir.glob("*.wav")):
        x = load_audio(f)
        start = min(max(0, int(np.abs(x).argmax()) - SAMPLE_RATE // 2), len(x) - WINDOW)
        out.append(x[start:start + WINDOW])
    return np.stack(out).astype(np.float32)


def _copy(export: Path, to: Path) -> Path:
    """The export in another folder (graphs hard-linked where the file system allows), to change its record."""
    shutil.copytree(export, to, copy_function=_link)
    return to


def _link(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def test_openvino_fp32_equals_onnx_runtime_on_whole_windows_text_and_every_stage_graph(tiny_export_2s, windows):
    ort = OnnxClassifier(tiny_export_2s, threads=1)
    ov = OnnxClassifier(tiny_export_2s, threads=1, runtime="openvino", precision="fp32")
    probs, sims = ort.scores(windows)
    ov_probs, ov_sims = ov.scores(windows)
    assert np.abs(ov_sims - sims).max() < 1e-5  # cosines: the fp32 bound on embeddings is 1e-4
    assert np.abs(ov_probs - probs).max() < 1e-4
    assert (ov_probs.argmax(-1) == probs.argmax(-1)).all()

    labels = ["dog barking", "rain", "a siren"]
    text = embed_labels(tiny_export_2s, labels, "the sound of {}", runtime="openvino")
    assert np.abs(text - embed_labels(tiny_export_2s, labels, "the sound of {}")).max() < 1e-5

    a = IncrementalGraphs(tiny_export_2s, threads=1)
    b = IncrementalGraphs(tiny_export_2s, threads=1, runtime="openvino")
    x = _frames(windows[0])  # a whole window through every stage graph, each fed ONNX Runtime's input
    for file in (FRONT_FILE, STEM_FILE, LAYER1_FILE, layer2_file(WINDOW), TAIL_FILE):
        want, got = a.run(file, x), b.run(file, x)
        for w, g in zip(want, got):
            if file == FRONT_FILE:  # dB: quiet bins carry the float32 noise of the summation order (verify.py)
                assert np.abs(g - w)[w > -60].max() < 5e-3 and np.abs(g - w).max() < 0.05
            else:
                assert np.abs(g - w).max() <= 1e-5 * np.abs(w).max(), file
        x = want[0]


def _frames(window: np.ndarray) -> np.ndarray:
    from audioclip.export.incremental import to_reference_scale
    from audioclip.model.constants import FRAME_LENGTH, HOP_LENGTH
    from audioclip.model.frames import frame_padding

    padded = np.pad(to_reference_scale(window), frame_padding(len(window)))
    return np.lib.stride_tricks.sliding_window_view(padded, FRAME_LENGTH)[::HOP_LENGTH][None].copy()


def test_the_export_records_what_openvino_passed_and_bf16_or_why_not(tiny_export_2s, windows):
    record = json.loads((tiny_export_2s / ovr.RECORD_FILE).read_text())
    assert record["precisions"]["fp32"] == {"fp32_stages": []}
    readme = (tiny_export_2s / "README.txt").read_text()
    assert "incremental [OpenVINO fp32]" in readme and "text_encoder [OpenVINO fp32]" in readme
    why = ovr.no_native_bf16()
    if why is not None:
        assert record["not_verified"]["bf16"] == why
        pytest.skip(f"bf16 not verified here: {why}")
    # the tiny model keeps bf16's bound with the whole trunk in bf16 (golden: see docs/export.md)
    assert "bf16" in record["precisions"], record["not_verified"]
    assert "[OpenVINO bf16" in readme
    fp32 = OnnxClassifier(tiny_export_2s, threads=1).scores(windows)
    bf16 = OnnxClassifier(tiny_export_2s, threads=1, runtime="openvino", precision="bf16").scores(windows)
    cos = (fp32[1] * bf16[1]).sum(-1) / np.linalg.norm(fp32[1], axis=-1) / np.linalg.norm(bf16[1], axis=-1)
    assert cos.min() > 0.99
    assert (bf16[0].argmax(-1) == fp32[0].argmax(-1)).all()
    assert 0 < np.abs(bf16[1] - fp32[1]).max() < 0.02  # bf16 did compute in bf16: not the f32 results


def test_a_precision_the_export_did_not_verify_is_a_one_line_error(tiny_export_2s, tmp_path):
    folder = _copy(tiny_export_2s, tmp_path / "export")
    record = json.loads((folder / ovr.RECORD_FILE).read_text())
    record["precisions"].pop("bf16", None)
    record["not_verified"]["bf16"] = "whole windows on noise: cosine 0.9800"
    ovr.write_record(folder, record)
    if ovr.no_native_bf16() is None:
        with pytest.raises(ValueError, match=r"OpenVINO bf16 was not verified for this export \(whole windows on "
                                             r"noise: cosine 0.9800\); use --precision fp32") as e:
            OnnxClassifier(folder, runtime="openvino", precision="bf16")
        assert "\n" not in str(e.value)
    (folder / ovr.RECORD_FILE).unlink()
    with pytest.raises(ValueError, match="records no OpenVINO verification .*export it again"):
        OnnxClassifier(folder, runtime="openvino")
    with pytest.raises(ValueError, match="ONNX Runtime runs the graphs at the precision they were exported with"):
        OnnxClassifier(folder, precision="bf16")


def test_bf16_on_a_cpu_without_native_bf16_says_so(tiny_export_2s, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AVX2 only\nflags\t\t: fpu sse2 avx avx2 fma\n\n")
    monkeypatch.setattr(ovr, "CPUINFO", cpuinfo)
    with pytest.raises(ValueError, match=r"--precision bf16: this CPU has no native bf16 \(its flags have neither "
                                         r"avx512_bf16 nor amx_bf16\).*use --precision fp32"):
        OnnxClassifier(tiny_export_2s, runtime="openvino", precision="bf16")
    assert OnnxClassifier(tiny_export_2s, runtime="openvino").runtime_precision == "fp32"  # f32 still runs
    assert "avx2" in ovr.cpu_description() and "avx512_bf16" not in ovr.cpu_description()


BLOCK_OPENVINO = """
import sys
class _NoOpenVino:
    def find_spec(self, name, path=None, target=None):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
sys.meta_path.insert(0, _NoOpenVino())
"""


def _run(args: list[str], env_extra: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.slow
def test_without_openvino_installed_the_stream_says_how_to_install_it(tiny_export_2s, clips_dir, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCK_OPENVINO)
    clip = sorted(clips_dir.glob("*.wav"))[0]
    done = _run(["-m", "audioclip.stream.cli", "--onnx", str(tiny_export_2s), "--runtime", "openvino",
                 "--input", str(clip), "--format", "jsonl", "-q"],
                {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, tmp_path)
    assert done.returncode != 0 and not done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "OpenVINO is not installed" in lines[0] and "pip install 'audioclip-stream[openvino]'" in lines[0]
    assert "--runtime onnxruntime" in lines[0]


CACHED_LOAD = """
import sys
import numpy as np
from audioclip.export.runtime import OnnxClassifier
c = OnnxClassifier(sys.argv[1], threads=1, runtime="openvino")
print(c.scores(np.zeros((1, 88200), np.float32))[0].argmax())
"""


@pytest.mark.slow
def test_a_second_process_start_loads_the_compiled_graphs_from_the_cache(tiny_export_2s, tmp_path):
    cache = tmp_path / "cache"
    script = tmp_path / "load.py"
    script.write_text(CACHED_LOAD)
    env = {"AUDIOCLIP_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    first = _run([str(script), str(tiny_export_2s)], env, tmp_path)
    assert first.returncode == 0, first.stderr
    blobs = {p.name: p.stat().st_mtime_ns for p in (cache / "openvino").glob("*.blob")}
    assert len(blobs) >= 5  # every stage graph the classifier runs (front, stem, layer1, layer2, tail)
    second = _run([str(script), str(tiny_export_2s)], env, tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    after = {p.name: p.stat().st_mtime_ns for p in (cache / "openvino").glob("*.blob")}
    assert after == blobs  # found, not compiled and written again


@pytest.mark.slow
def test_a_monitor_on_openvino_gives_the_top_labels_of_onnx_runtime(tiny_export_2s, clips_dir, tmp_path):
    from audioclip.monitor.config import MonitorConfig

    clip = sorted(clips_dir.glob("*.wav"))[2]
    tops = {}
    for runtime in ("onnxruntime", "openvino"):
        d = {"model": {"onnx": str(tiny_export_2s), "runtime": runtime, "threads": 1},
             "defaults": {"window": 2.0, "min_dbfs": -90.0},
             "labels": [{"name": "cat"}, {"name": "dog"}, {"name": "siren"}],
             "sources": [{"name": "clip", "file": str(clip), "realtime": False}]}
        _, lines = run_monitor(MonitorConfig.from_dict(d))
        rows = [x for x in lines if "t_start" in x]
        assert len(rows) >= 5
        tops[runtime] = [(x["t_start"], x["top"]) for x in rows]
        tops[runtime + " probs"] = np.array([[x["probs"][k] for k in ("cat", "dog", "siren")] for x in rows])
    assert tops["openvino"] == tops["onnxruntime"]
    assert np.abs(tops["openvino probs"] - tops["onnxruntime probs"]).max() < 1e-4


def test_monitor_toml_names_the_key_of_a_bad_runtime_or_precision():
    from audioclip.monitor.config import ConfigError, MonitorConfig

    base = {"labels": [{"name": "cat"}], "sources": [{"name": "a", "file": "a.wav"}]}
    for model, key, reason in (({"runtime": "openvino"}, "model.runtime", "runs an export: set onnx"),
                               ({"onnx": "x", "runtime": "tensorrt"}, "model.runtime", "'onnxruntime' or 'openvino'"),
                               ({"onnx": "x", "precision": "bf16"}, "model.precision", 'runtime = "openvino"'),
                               ({"precision": "fp16"}, "model.precision", "'fp32' or 'bf16'")):
        with pytest.raises(ConfigError, match=reason) as e:
            MonitorConfig.from_dict({**base, "model": model})
        assert e.value.key == key
    config = MonitorConfig.from_dict({**base, "model": {"onnx": "x", "runtime": "openvino", "precision": "bf16"}})
    assert (config.model.runtime, config.model.precision) == ("openvino", "bf16")


def test_pytorch_bf16_runs_under_autocast_and_is_checked_against_fp32_at_load(tiny_checkpoint, windows):
    from audioclip.stream.backends import load_classifier

    if ovr.no_native_bf16() is not None:
        pytest.skip(f"no native bf16 here: {ovr.no_native_bf16()}")
    fp32 = load_classifier(checkpoint=tiny_checkpoint, labels=["cat", "dog", "siren"], threads=1)
    bf16 = load_classifier(checkpoint=tiny_checkpoint, labels=["cat", "dog", "siren"], threads=1, precision="bf16")
    a, b = fp32.similarities(windows).numpy(), bf16.similarities(windows).numpy()
    assert 0 < np.abs(a - b).max() < 0.02  # computed in bf16, within its bound
    assert (fp32.probs(windows).argmax(-1) == bf16.probs(windows).argmax(-1)).all()
    with pytest.raises(ValueError, match="runtime openvino runs an export: pass onnx DIR"):
        load_classifier(checkpoint=tiny_checkpoint, labels=["cat"], runtime="openvino")
