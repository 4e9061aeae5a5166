"""audioclip-label: a folder of recordings labelled like the stream labels each file, crash-safe and resumable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audioclip.archive import LabelSettings, ModelSpec, find_recordings, label_archive
from audioclip.archive.cli import label_app
from audioclip.archive.store import RAVEN_COLUMNS
from audioclip.stream.cli import app as stream_app

from helpers import require_module

LABELS = ["dog", "siren", "rain"]
WINDOW, HOP = 1.0, 0.5  # short windows: the tiny model still runs the full-size front end
SETTINGS = LabelSettings(window=WINDOW, hop=HOP, events=True, threshold=0.34, embeddings=True,
                         formats=("parquet", "csv", "raven"))
OUTPUTS = ["windows.parquet", "embeddings.npy", "events.parquet", "events.csv", "errors.csv"]



@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Mixed rates, channels and containers, one shorter than a window, one undecodable, one empty."""
    root = tmp_path_factory.mktemp("recordings")
    rng = np.random.default_rng(0)
    t = np.arange(int(3.3 * 48000)) / 48000
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t) * (t > 1.2), rng.normal(0, 0.1, len(t))], axis=1)
    sf.write(root / "a.wav", stereo.astype(np.float32), 48000)
    (root / "sub").mkdir()
    sf.write(root / "sub" / "b.flac", rng.normal(0, 0.2, int(1.7 * 22050)).astype(np.float32), 22050)
    sf.write(root / "c.wav", rng.normal(0, 0.3, int(0.6 * 44100)).astype(np.float32), 44100, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(root / "a.wav"), "-c:a", "aac",
                    str(root / "sub" / "d.m4a")], check=True, timeout=60)
    (root / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (root / "sub" / "empty.ogg").write_bytes(b"")
    (root / "notes.txt").write_text("not a recording")
    return root


@pytest.fixture(scope="module")
def spec(tiny_checkpoint) -> ModelSpec:
    return ModelSpec.from_labels(LABELS, checkpoint=str(tiny_checkpoint), threads=1)


@pytest.fixture(scope="module")
def labelled(recordings, spec, tmp_path_factory):
    """One uninterrupted in-process run over ``recordings``: ``(out, report)``."""
    out = tmp_path_factory.mktemp("labelled") / "out"
    report = label_archive(find_recordings([recordings]), out=out, spec=spec, settings=SETTINGS)
    return out, report


def rows_of(out: Path, file: Path) -> list[dict]:
    return [r for r in pq.read_table(out / "windows.parquet").to_pylist() if r["file"] == str(file)]


@pytest.mark.parametrize("name", ["a.wav", "c.wav"])
def test_rows_equal_audioclip_stream(labelled, recordings, tiny_checkpoint, name):
    """48 kHz stereo resampled and overlapping windows (a.wav), a file shorter than a window (c.wav)."""
    out, _ = labelled
    result = CliRunner().invoke(stream_app, ["--input", str(recordings / name), "--format", "jsonl", "--labels",
                                             ",".join(LABELS), "--checkpoint", str(tiny_checkpoint), "--window",
                                             str(WINDOW), "--hop", str(HOP), "--threads", "1", "-q"])
    assert result.exit_code == 0, result.stderr
    streamed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    rows = rows_of(out, recordings / name)
    assert len(rows) == len(streamed) == (1 if name == "c.wav" else 5)
    for row, s in zip(rows, streamed):
        assert (round(row["t_start"], 6), round(row["t_end"], 6)) == (s["t_start"], s["t_end"])
        assert row["top"] == s["top"]
        for label in LABELS:
            assert abs(row[label] - s["probs"][label]) < 1e-4


def test_outputs(labelled, recordings):
    out, report = labelled
    files = sorted({r["file"] for r in pq.read_table(out / "windows.parquet").to_pylist()})
    assert files == sorted(str(recordings / n) for n in ("a.wav", "c.wav", "sub/b.flac", "sub/d.m4a"))
    assert report.labelled == 4 and len(report.errors) == 2 and report.skipped == 0
    errors = (out / "errors.csv").read_text().splitlines()
    assert errors[0] == "file,error" and len(errors) == 3
    assert errors[1].startswith(f"{recordings / 'bad.wav'},neither libsndfile nor FFmpeg can decode it (")
    assert errors[2] == f"{recordings / 'sub' / 'empty.ogg'},empty file (0 bytes)"

    windows = pq.read_table(out / "windows.parquet")
    assert windows.column_names == ["file", "t_start", "t_end", "top", *LABELS]
    probs = np.stack([windows.column(label).to_numpy() for label in LABELS], axis=1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    embeddings = np.load(out / "embeddings.npy")
    assert embeddings.dtype == np.float16 and embeddings.shape == (windows.num_rows, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings.astype(np.float32), axis=1), 1.0, atol=2e-3)

    # the m4a (AAC through FFmpeg) holds a.wav's audio: the same duration, give or take the codec's padding
    manifest = {e["file"]: e for e in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    m4a, wav = manifest[str(recordings / "sub" / "d.m4a")], manifest[str(recordings / "a.wav")]
    assert m4a["decoder"] == "FFmpeg" and wav["decoder"] == "libsndfile"
    assert abs(m4a["seconds"] - wav["seconds"]) < 0.05 and wav["seconds"] == pytest.approx(3.3, abs=1e-3)


def test_events_and_raven(labelled, recordings):
    out, _ = labelled
    events = pq.read_table(out / "events.parquet").to_pylist()
    csv_lines = (out / "events.csv").read_text().splitlines()
    assert csv_lines[0] == "file,label,t_start,t_end,peak,mean" and len(csv_lines) == len(events) + 1
    assert events, "the threshold is set so that the tiny model raises events"
    rows = pq.read_table(out / "windows.parquet").to_pylist()
    for e in events:
        mine = {r["t_end"]: r[e["label"]] for r in rows if r["file"] == e["file"]}
        assert mine[e["t_start"]] >= 0.34  # an event starts at the end of its first window
        inside = [p for t, p in mine.items() if e["t_start"] <= t <= e["t_end"] and p >= 0.34 - 0.05]
        assert max(inside) == pytest.approx(e["peak"])
        assert e["t_end"] == max(mine) or mine[e["t_end"]] < 0.34 - 0.05  # it ends below the hysteresis

    table = (out / "raven" / "a.AudioCLIP.selection.table.txt").read_text().splitlines()
    assert table[0].split("\t") == list(RAVEN_COLUMNS)
    assert table[0].startswith("Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)")
    mine = rows_of(out, recordings / "a.wav")
    expected = sorted((r["t_start"], label) for r in mine for label in LABELS if r[label] >= 0.34)
    got = [line.split("\t") for line in table[1:]]
    assert sorted((float(g[3]), g[7]) for g in got) == expected
    assert [g[0] for g in got] == [str(i + 1) for i in range(len(got))]
    assert all(g[10] == str((recordings / "a.wav").resolve()) for g in got)
    assert sorted(p.name for p in (out / "raven").iterdir()) == [
        "a.AudioCLIP.selection.table.txt", "b.AudioCLIP.selection.table.txt", "c.AudioCLIP.selection.table.txt",
        "d.AudioCLIP.selection.table.txt"]


def same_outputs(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        if name.endswith(".parquet"):
            assert pq.read_table(a / name).equals(pq.read_table(b / name)), name
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for table in (a / "raven").iterdir():
        assert table.read_bytes() == (b / "raven" / table.name).read_bytes()


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_outputs(labelled, recordings, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from audioclip.archive.cli import label_main; label_main()", str(recordings),
           "--labels", ",".join(LABELS), "--checkpoint", str(tiny_checkpoint), "--window", str(WINDOW),
           "--hop", str(HOP), "--events", "--score", "softmax", "--threshold", "0.34", "--embeddings", "--format",
           "parquet,csv,raven",
           "--workers", "1", "--threads", "1", "--out", str(out), "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / "manifest.jsonl"
        if manifest.exists() and manifest.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    done = (out / "manifest.jsonl").read_text().count("\n")
    assert 1 <= done < 4 and not (out / "windows.parquet").exists()

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{4 - done} labelled, {done} already done, 2 failed" in resumed.stderr
    same_outputs(labelled[0], out)


@pytest.mark.slow
def test_resume_redoes_a_corrupt_part_and_the_pool_matches(labelled, recordings, spec, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(labelled[0], out)
    for part in sorted((out / "parts").glob("*.events.parquet"))[:2]:
        part.write_bytes(part.read_bytes()[:20])  # torn files, as on a disk that lied about fsync
    (out / "windows.parquet").unlink()
    report = label_archive(find_recordings([recordings]), out=out, spec=spec, settings=SETTINGS, workers=2,
                           resume=True)  # two recordings to redo: on a pool of two processes
    assert (report.labelled, report.skipped) == (2, 2)
    same_outputs(labelled[0], out)


def test_a_finished_run_is_refused_without_resume_and_with_other_settings(labelled, recordings, spec):
    out, _ = labelled
    with pytest.raises(ValueError, match="pass --resume"):
        label_archive(find_recordings([recordings]), out=out, spec=spec, settings=SETTINGS)
    other = LabelSettings(window=WINDOW, hop=1.0, events=True, threshold=0.34, embeddings=True)
    with pytest.raises(ValueError, match="hop = 0.5, not 1.0"):
        label_archive(find_recordings([recordings]), out=out, spec=spec, settings=other, resume=True)


def run_label(*args) -> tuple[int, str]:
    result = CliRunner().invoke(label_app, [str(a) for a in args])
    return result.exit_code, result.stderr


@pytest.mark.parametrize("args, ray, address", [
    (["{rec}"], False, None),
    (["{rec}", "--ray"], True, None),  # the last argument
    (["--ray", "--labels", "a,b", "{rec}"], True, None),  # another option follows
    (["{rec}", "--ray", "10.0.0.7:6379"], True, "10.0.0.7:6379"),
    (["--ray=ray://head:10001", "{rec}"], True, "ray://head:10001"),
])
def test_ray_takes_an_optional_address(recordings, tiny_checkpoint, tmp_path, monkeypatch, args, ray, address):
    import audioclip.archive.runner as runner

    seen = {}

    def record(recordings, **kwargs):
        seen.update(kwargs, recordings=recordings)
        return runner.LabelReport(len(recordings), 0, 0, [], 0.0, 0, 0.0)

    monkeypatch.setattr(runner, "label_archive", record)  # the arguments it is given, not a Ray run
    args = [a.format(rec=recordings / "c.wav") for a in args]
    labels = [] if "--labels" in args else ["--labels", "a,b"]
    code, stderr = run_label(*args, *labels, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out", "-q")
    assert code == 0, stderr
    assert seen["recordings"] == [recordings / "c.wav"]
    assert (seen["ray"], seen["ray_address"]) == (ray, address)


@pytest.mark.parametrize("args, message", [
    (["{empty}", "--labels", "a,b"], "no recordings found in"),
    (["{missing}", "--labels", "a,b"], "no such file or folder"),
    (["{rec}", "--labels", "a,b", "--format", "parquet,xlsx"], "--format: unknown format 'xlsx'"),
    (["{rec}", "--labels", "a,b", "--config", "monitor.toml"], "--config supplies the labels and the model"),
    (["{rec}", "--labels", "a,top"], "'top' is a column name of the outputs"),
    (["{rec}", "--labels", "a,b", "--workers", "0"], "--workers: must be a whole number at least 1"),
])
def test_user_errors_are_one_line(recordings, tiny_checkpoint, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty", missing=tmp_path / "nope", rec=recordings / "c.wav") for a in args]
    code, stderr = run_label(*args, "--checkpoint", tiny_checkpoint, "--out", tmp_path / "out", "-q")
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr


def test_find_recordings_walks_folders_sorted(recordings):
    found = find_recordings([recordings, recordings / "c.wav"])
    assert [p.relative_to(recordings).as_posix() for p in found] == [
        "a.wav", "bad.wav", "c.wav", "sub/b.flac", "sub/d.m4a", "sub/empty.ogg"]
    assert os.fspath(found[2]) == os.fspath(recordings / "c.wav")


def test_config_supplies_prompt_groups_and_the_model(recordings, tiny_checkpoint, tmp_path):
    from audioclip.archive import label_recording
    from audioclip.model import load_model
    from audioclip.stream.config import StreamConfig
    from audioclip.stream.labels import torch_group_classifier

    groups = [("dog", ["dog barking", "a dog"]), ("siren", ["siren", "an ambulance"]), ("rain", ["rain"])]
    labels = "\n".join(f'[[labels]]\nname = "{name}"\nprompts = {json.dumps(prompts)}\n' for name, prompts in groups)
    (tmp_path / "monitor.toml").write_text(
        f'[model]\ncheckpoint = "{tiny_checkpoint}"\nthreads = 1\n\n[defaults]\ntemplate = "the sound of {{}}"\n\n'
        f'{labels}\n[[sources]]\nname = "in"\nstdin = true\n')
    code, stderr = run_label(recordings / "sub" / "b.flac", "--config", tmp_path / "monitor.toml", "--window", "1",
                             "--hop", "0.5", "--out", tmp_path / "out", "-q")
    assert code == 0, stderr
    expected = label_recording(recordings / "sub" / "b.flac", config=StreamConfig(window=1.0, hop=0.5),
                               classifier=torch_group_classifier(load_model(tiny_checkpoint), groups,
                                                                 "the sound of {}"))
    table = pq.read_table(tmp_path / "out" / "windows.parquet")
    assert table.column_names[4:] == ["dog", "siren", "rain"] and table.num_rows == len(expected.t_start) == 2
    got = np.stack([table.column(name).to_numpy() for name, _ in groups], axis=1)
    np.testing.assert_allclose(got, expected.probs, atol=1e-6)
    settings = json.loads((tmp_path / "out" / "archive.json").read_text())
    assert settings["groups"][0] == ["dog", ["dog barking", "a dog"]] and settings["template"] == "the sound of {}"


@pytest.mark.slow
def test_ray_data_gives_the_local_pools_outputs(labelled, recordings, spec, tmp_path):
    ray = require_module("ray", "Ray is not installed (pip install 'audioclip-stream[archive]')")

    ray.init(num_cpus=2, object_store_memory=200_000_000, include_dashboard=False, log_to_driver=False)
    try:
        report = label_archive(find_recordings([recordings]), out=tmp_path / "out", spec=spec, settings=SETTINGS,
                               workers=2, ray=True)
    finally:
        ray.shutdown()
    assert (report.labelled, len(report.errors)) == (4, 2)
    same_outputs(labelled[0], tmp_path / "out")


def test_a_folder_holding_other_files_is_refused_before_the_model_loads(recordings, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.pdf").write_bytes(b"%PDF")
    spec = ModelSpec.from_labels(["a"], checkpoint=str(tmp_path / "no-such-checkpoint.pt"))  # never loaded
    for resume in (False, True):
        with pytest.raises(ValueError, match="is not an empty folder and holds no labelling run"):
            label_archive([recordings / "c.wav"], out=tmp_path / "out", spec=spec, resume=resume)


def test_a_video_files_audio_track_is_labelled(spec, tmp_path):
    from audioclip.archive import RecordingSource, label_recording
    from audioclip.stream.config import StreamConfig

    video = tmp_path / "camera.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=5",
                    "-f", "lavfi", "-i", "sine=frequency=500:sample_rate=32000", "-t", "1.6", "-c:v", "mpeg4",
                    "-c:a", "aac", "-ac", "2", str(video)], check=True, timeout=60)
    source = RecordingSource(video)
    assert (source.decoder, source.rate, source.channels) == ("FFmpeg", 32000.0, 2)
    source.close()
    result = label_recording(video, classifier=spec.load(), config=StreamConfig(window=WINDOW, hop=HOP))
    assert result.decoder == "FFmpeg" and abs(result.seconds - 1.6) < 0.05
    assert result.t_start.tolist() == [0.0, 0.5] and result.probs.shape == (2, len(LABELS))


def test_a_recording_with_nan_samples_is_listed_and_the_run_goes_on(recordings, spec, tmp_path):
    nan = np.full(44100, 0.1, np.float32)
    nan[1000:1100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 44100, subtype="FLOAT")
    report = label_archive([tmp_path / "nan.wav", recordings / "c.wav"], out=tmp_path / "out", spec=spec,
                           settings=LabelSettings(window=WINDOW, hop=HOP))
    assert report.labelled == 1 and [e[0] for e in report.errors] == [str(tmp_path / "nan.wav")]
    assert "nan.wav,holds NaN or infinite samples (near 0.0 s)" in (tmp_path / "out" / "errors.csv").read_text()
    assert pq.read_table(tmp_path / "out" / "windows.parquet").num_rows == 1


@pytest.mark.slow
def test_onnx_embeddings_and_scores_match_pytorch(labelled, recordings, tiny_checkpoint, tmp_path):
    """--onnx with new labels and --embeddings: the export's audio encoder gives the embeddings."""
    from audioclip.export import exporter
    # --dynamic-length: c.wav is shorter than a window and scored as it is, as PyTorch does (a graph
    # fixed to the window would pad it to the window)
    exporter.export_onnx(checkpoint=tiny_checkpoint, out=tmp_path / "export", labels=["x"], window=WINDOW, threads=1,
                         dynamic_length=True)
    spec = ModelSpec.from_labels(LABELS, onnx=str(tmp_path / "export"), threads=1)
    files = [recordings / "c.wav", recordings / "sub" / "b.flac"]
    label_archive(files, out=tmp_path / "out", spec=spec, settings=SETTINGS)
    onnx = pq.read_table(tmp_path / "out" / "windows.parquet")
    torch_rows = pq.read_table(labelled[0] / "windows.parquet")
    expected = [r for r in torch_rows.to_pylist() if r["file"] in map(str, files)]
    assert [(r["file"], r["t_start"]) for r in onnx.to_pylist()] == [(r["file"], r["t_start"]) for r in expected]
    for got, want in zip(onnx.to_pylist(), expected):
        assert max(abs(got[label] - want[label]) for label in LABELS) < 1e-4
    all_rows = [(r["file"], r["t_start"]) for r in torch_rows.to_pylist()]
    torch_emb = np.load(labelled[0] / "embeddings.npy")[[all_rows.index((r["file"], r["t_start"])) for r in expected]]
    np.testing.assert_allclose(np.load(tmp_path / "out" / "embeddings.npy").astype(np.float32),
                               torch_emb.astype(np.float32), atol=2e-3)
