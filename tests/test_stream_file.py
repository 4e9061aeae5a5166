"""``audioclip-stream`` on files and stdin: results equal offline classification, bad input fails in one line."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from typer.testing import CliRunner

from audioclip import ZeroShotClassifier
from audioclip.model.constants import FRAME_LENGTH, SAMPLE_RATE
from audioclip.stream import FileSource, StdinSource, StreamConfig, run_stream
from audioclip.stream.cli import app

from helpers import make_tiny_model, require

LABELS = ["cat", "thunder", "car horn", "alarm clock", "coughing", "dog"]
JSONL_KEYS = ["t_start", "t_end", "top", "probs", "similarity", "latency_ms"]


def run_cli(*args: str):
    args = [str(a) for a in args]
    if "--threads" not in args:
        args += ["--threads", "1"]  # a tiny model on a shared machine: one thread is fastest
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.stdout, result.stderr



def windows_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip() and "t_start" in line]


@pytest.fixture(scope="module")
def long_clip(clips_dir, tmp_path_factory) -> Path:
    """14 s at 44.1 kHz mono, 16-bit: alarm clock, cat, then 4 s of coughing."""
    parts = [sf.read(clips_dir / name, dtype="int16")[0] for name in
             ("alarm_clock_3-120526-B-37.wav", "cat_3-95694-A-5.wav", "coughing_1-58792-A-24.wav")]
    x = np.concatenate(parts)[:14 * SAMPLE_RATE]
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    return path


def offline(classifier, x: np.ndarray, window: float, hop: float):
    win, hop_n = round(window * SAMPLE_RATE), round(hop * SAMPLE_RATE)
    starts = range(0, len(x) - win + 1, hop_n)
    probs, sims = zip(*(classifier.scores(x[s:s + win]) for s in starts))
    return list(starts), torch.cat(probs).numpy(), torch.cat(sims).numpy()


@pytest.mark.slow
def test_file_jsonl_equals_offline_classification_window_by_window(long_clip, tiny_checkpoint):
    code, out, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", ",".join(LABELS), "--input", long_clip,
                             "--format", "jsonl", "--hop", "0.5")  # the default hop: test_stream_incremental.py
    assert code == 0, err
    rows = windows_of(out)
    assert all(list(row) == JSONL_KEYS for row in rows)
    x = sf.read(long_clip, dtype="float32")[0]
    starts, probs, sims = offline(ZeroShotClassifier(make_tiny_model(), LABELS), x, 5.0, 0.5)
    assert len(rows) == len(starts) == 19
    assert (rows[0]["t_start"], rows[0]["t_end"]) == (0.0, 5.0)
    assert (rows[-1]["t_start"], rows[-1]["t_end"]) == (9.0, 14.0)
    for row, start, p, s in zip(rows, starts, probs, sims):
        assert row["t_start"] == pytest.approx(start / SAMPLE_RATE, abs=1e-6)
        assert np.abs(np.array(list(row["probs"].values())) - p).max() <= 1e-4
        assert np.abs(np.array(list(row["similarity"].values())) - s).max() <= 1e-4
        assert row["top"] == LABELS[int(np.argmax(p))]
    assert "windows 19, dropped 0" in err  # the summary goes to stderr, stdout stays JSON


@pytest.mark.slow
def test_golden_stream_equals_offline(long_clip, golden_model):
    """The full-size audio head through the streaming path: every window equals offline slicing."""
    classifier = ZeroShotClassifier(golden_model, LABELS)
    rows = []
    stats, _ = run_stream(source=FileSource(long_clip), classifier=classifier, on_result=rows.append,
                          config=StreamConfig(hop=1.0))
    starts, probs, sims = offline(classifier, sf.read(long_clip, dtype="float32")[0], 5.0, 1.0)
    assert stats.dropped == 0 and [r.t_start for r in rows] == [s / SAMPLE_RATE for s in starts]
    assert np.abs(np.stack([r.probs for r in rows]) - probs).max() <= 1e-4
    assert np.abs(np.stack([r.similarity for r in rows]) - sims).max() <= 1e-4
    assert len({r.top for r in rows}) > 1  # the top label changes over the file


@pytest.mark.slow
def test_48k_stereo_gives_the_top_labels_of_its_44k1_mono_version(long_clip, golden_model, tmp_path):
    """A 48 kHz stereo recording streamed (mixdown + streaming resampler) labels like its 44.1 kHz
    mono version made offline (what `sox in.wav -c 1 -r 44100 out.wav` does).

    The recording is made from the 44.1 kHz clip; its 44.1 kHz version is derived from the recording
    and not the clip, because both resamplings cut the band above 20.1 kHz (soxr's 91% passband)
    and the golden checkpoint's random audio head reacts to that band (probs move by up to 0.06).
    """
    classifier = ZeroShotClassifier(golden_model, LABELS)
    x48 = soxr.resample(sf.read(long_clip, dtype="float32")[0], SAMPLE_RATE, 48000, quality="VHQ")
    stereo = np.stack([1.4 * x48, 0.6 * x48], axis=1)  # different channels; their mean is x48
    stereo_path, mono_path = tmp_path / "stereo48k.wav", tmp_path / "mono44k1.wav"
    sf.write(stereo_path, stereo, 48000, subtype="FLOAT")
    sf.write(mono_path, soxr.resample(stereo.mean(axis=1), 48000, SAMPLE_RATE, quality="VHQ"), SAMPLE_RATE,
             subtype="FLOAT")
    results = {}
    for path in (stereo_path, mono_path):
        rows = []
        run_stream(source=FileSource(path), classifier=classifier, on_result=rows.append, config=StreamConfig(hop=1.0))
        results[path] = rows
    stereo_rows, mono_rows = results[stereo_path], results[mono_path]
    assert [r.t_start for r in stereo_rows] == [r.t_start for r in mono_rows] == [float(k) for k in range(10)]
    assert [r.top for r in stereo_rows] == [r.top for r in mono_rows]
    assert len({r.top for r in mono_rows}) > 1
    assert np.abs(np.stack([r.probs for r in stereo_rows]) - np.stack([r.probs for r in mono_rows])).max() < 1e-3


def test_stdin_s16le_equals_the_same_file(long_clip, tiny_checkpoint):
    classifier = ZeroShotClassifier(make_tiny_model(), LABELS)
    pcm = sf.read(long_clip, dtype="int16")[0]
    by_file, by_stdin = [], []
    run_stream(source=FileSource(long_clip), classifier=classifier, on_result=by_file.append,
               config=StreamConfig(hop=2.0))
    run_stream(source=StdinSource(io.BytesIO(pcm.astype("<i2").tobytes() + b"\x01")), classifier=classifier,
               on_result=by_stdin.append, config=StreamConfig(hop=2.0))
    assert len(by_file) == len(by_stdin) == 5
    for a, b in zip(by_file, by_stdin):
        assert a.t_start == b.t_start
        np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)


def test_short_file_is_one_window_as_long_as_the_file_and_csv_has_the_jsonl_columns(clips_dir, tmp_path,
                                                                                     tiny_checkpoint):
    """A 2-s file under a 10-s window is scored as it is (the model takes any length), not padded to 10 s:
    the reference's result on the clip, and no 10-s buffer of zeros."""
    x = sf.read(clips_dir / "cat_3-95694-A-5.wav", dtype="float32")[0][:SAMPLE_RATE * 2]
    path = tmp_path / "short.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    code, out, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", "cat,dog", "--input", path,
                             "--window", "10", "--format", "csv")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "t_start,t_end,top,probs.cat,probs.dog,similarity.cat,similarity.dog,latency_ms"
    assert len(lines) == 2
    row = lines[1].split(",")
    classifier = ZeroShotClassifier(make_tiny_model(), ["cat", "dog"])
    probs, sims = (np.asarray(a)[0] for a in classifier.scores(x[None]))
    _, padded = (np.asarray(a)[0] for a in classifier.scores(np.pad(x, (0, 8 * SAMPLE_RATE))[None]))
    assert (float(row[0]), float(row[1])) == (0.0, 2.0)
    np.testing.assert_allclose([float(row[3]), float(row[4])], probs, atol=1e-4)
    np.testing.assert_allclose([float(row[5]), float(row[6])], sims, atol=1e-4)
    assert np.abs(sims - padded).max() > 1e-3  # what the old padding to the window gave


def test_input_shorter_than_one_frame_is_padded_to_one_frame(tiny_checkpoint):
    x = np.random.default_rng(3).normal(0, 0.1, 500).astype(np.float32)
    classifier = ZeroShotClassifier(make_tiny_model(), ["cat", "dog"])
    rows = []
    run_stream(source=StdinSource(io.BytesIO((x * 32767).astype("<i2").tobytes())), classifier=classifier,
               on_result=rows.append, config=StreamConfig(window=5.0, hop=1.0))
    assert len(rows) == 1 and rows[0].t_end == pytest.approx(FRAME_LENGTH / SAMPLE_RATE)
    framed = np.zeros(FRAME_LENGTH, np.float32)
    framed[:500] = np.round(x * 32767) / 32768
    np.testing.assert_allclose(rows[0].probs, classifier.probs(framed)[0].numpy(), atol=1e-5)


def test_smoothing_and_events(long_clip, tiny_checkpoint):
    code, out, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", ",".join(LABELS), "--input", long_clip,
                             "--format", "jsonl", "--hop", "1", "--smooth", "3", "--events", "--threshold", "0.5",
                             "--score", "softmax")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    rows = [line for line in lines if "t_start" in line]
    events = [line for line in lines if "event" in line]
    x = sf.read(long_clip, dtype="float32")[0]
    _, probs, _ = offline(ZeroShotClassifier(make_tiny_model(), LABELS), x, 5.0, 1.0)
    for i, row in enumerate(rows):
        expected = probs[max(0, i - 2):i + 1].mean(axis=0)
        assert np.abs(np.array(list(row["probs"].values())) - expected).max() <= 1e-4
    # every start has an end; the tiny model's top label stays above 0.5, so its event spans the stream
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[0] == {"event": "start", "label": rows[0]["top"], "t": 5.0, "peak": rows[0]["probs"][rows[0]["top"]]}
    assert events[1]["t"] == rows[-1]["t_end"] == 14.0
    assert "events: " + rows[0]["top"] + " x1" in err


@pytest.mark.parametrize("signal", ["silent", "clipped"])
def test_silent_and_clipped_input_give_finite_results(signal, tmp_path, tiny_checkpoint):
    n = 6 * SAMPLE_RATE
    x = np.zeros(n, np.float32) if signal == "silent" else np.sign(np.sin(np.arange(n) * 0.05)).astype(np.float32)
    path = tmp_path / f"{signal}.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    code, out, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", "a,b", "--input", path, "--format", "jsonl")
    assert code == 0, err
    rows = windows_of(out)
    assert len(rows) == 2  # 5-s windows every 0.50884 s (the second shares work with the first)
    for row in rows:
        values = list(row["probs"].values()) + list(row["similarity"].values())
        assert all(np.isfinite(values)) and sum(row["probs"].values()) == pytest.approx(1.0, abs=1e-5)


def one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


def test_bad_input_fails_in_one_line(tmp_path, tiny_checkpoint, clips_dir):
    clip = clips_dir / "cat_3-95694-A-5.wav"
    code, _, err = run_cli("--checkpoint", tiny_checkpoint, "--input", clip)
    one_line_error(code, err, "carries no labels", "--labels")
    code, _, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", "a,b", "--input", tmp_path / "nope.wav")
    one_line_error(code, err, "nope.wav", "no such file")
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 100)
    code, _, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", "a,b", "--input", text)
    one_line_error(code, err, "notes.wav", "not an audio file")
    code, _, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", "a,,b", "--input", clip)
    one_line_error(code, err, "empty")
    code, _, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", "a,a", "--input", clip)
    one_line_error(code, err, "duplicate")
    code, _, err = run_cli("--checkpoint", tmp_path / "missing.pt", "--labels", "a", "--input", clip)
    one_line_error(code, err, "missing.pt")
    code, _, err = run_cli("--labels", "a", "--input", clip, "--hop", "0")
    one_line_error(code, err, "hop")
    code, _, err = run_cli("--labels", "a", "--input", clip, "--window", "0.01")
    one_line_error(code, err, "window")
    code, _, err = run_cli("--labels", "a", "--input", clip, "--events", "--threshold", "1.5")
    one_line_error(code, err, "threshold")


def test_release_name_offline_shows_the_model_cores_line(tmp_path, clips_dir, monkeypatch):
    monkeypatch.setenv("AUDIOCLIP_CACHE", str(tmp_path / "empty-cache"))
    import audioclip.model.checkpoint as checkpoint

    def no_network(url, dest, size):
        raise OSError("network is unreachable")

    monkeypatch.setattr(checkpoint, "_download", no_network)
    code, _, err = run_cli("--labels", "a", "--input", clips_dir / "cat_3-95694-A-5.wav")
    one_line_error(code, err, "AudioCLIP-Full-Training.pt", "empty-cache")


@pytest.mark.slow
def test_missing_portaudio_is_one_line_and_file_mode_still_works(tmp_path, tiny_checkpoint, clips_dir):
    """A stand-in ``sounddevice`` raises what the real one raises when libportaudio2 is absent."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "audioclip.stream.cli", "--checkpoint", str(tiny_checkpoint), "--labels", "cat,dog"]
    mic = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    one_line_error(mic.returncode, mic.stderr, "PortAudio library not found", "libportaudio2")
    listing = subprocess.run(cmd[:3] + ["--list-devices"], env=env, capture_output=True, text=True, timeout=120)
    one_line_error(listing.returncode, listing.stderr, "libportaudio2")
    clip = clips_dir / "cat_3-95694-A-5.wav"
    ok = subprocess.run(cmd + ["--input", str(clip), "--format", "jsonl", "-q", "--threads", "1"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert len(windows_of(ok.stdout)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_a_live_stream_with_a_summary(signum, tiny_checkpoint, clips_dir):
    import signal
    import time

    clip = clips_dir / "thunder_3-144891-B-19.wav"
    proc = subprocess.Popen(
        [sys.executable, "-m", "audioclip.stream.cli", "--checkpoint", str(tiny_checkpoint), "--labels", "a,b",
         "--input", str(clip), "--realtime", "--format", "jsonl", "--window", "1", "--hop", "0.5", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background shell ignores SIGINT
    first = proc.stdout.readline()  # the first window ends at 1 s of the paced file
    time.sleep(1.0)
    proc.send_signal(getattr(signal, signum))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if signum == "SIGINT" else 0), err  # Ctrl-C: the shell's 130; SIGTERM: a clean stop
    rows = windows_of(first + out)
    assert 1 <= len(rows) < 9 and rows[-1]["t_end"] < 5.0  # stopped before the end of the 5-s file
    assert f"windows {len(rows)}, dropped " in err and "latency mean" in err and "Traceback" not in err


def test_fine_tuned_checkpoint_streams_with_its_own_labels(tmp_path, clips_dir):
    from audioclip.model import atomic_save, finetuned_checkpoint

    model = make_tiny_model()
    labels = ["meow", "bark", "rain"]
    with torch.no_grad():
        embeddings = model.encode_text(labels, "a {}")
    path = tmp_path / "finetuned.pt"
    atomic_save(finetuned_checkpoint(model, labels, embeddings, template="a {}", mode="cooperative"), path)
    clip = clips_dir / "cat_3-95694-A-5.wav"
    code, out, err = run_cli("--checkpoint", path, "--input", clip, "--format", "jsonl")
    assert code == 0, err
    (row,) = windows_of(out)
    assert list(row["probs"]) == labels
    expected = ZeroShotClassifier(make_tiny_model(), labels, "a {}").probs(sf.read(clip, dtype="float32")[0])[0]
    np.testing.assert_allclose(list(row["probs"].values()), expected.numpy(), atol=1e-4)
    code, _, err = run_cli("--checkpoint", path, "--input", clip, "--template", "the sound of {}")
    one_line_error(code, err, "--template")


def test_a_folder_as_input_or_checkpoint_is_named_a_folder(tmp_path, tiny_checkpoint, clips_dir):
    code, _, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", "a,b", "--input", tmp_path)
    one_line_error(code, err, str(tmp_path), "is a folder")
    code, _, err = run_cli("--checkpoint", tmp_path, "--labels", "a,b", "--input", clips_dir / "cat_3-95694-A-5.wav")
    one_line_error(code, err, str(tmp_path), "is a folder")


def test_an_empty_input_has_no_nan_in_its_summary(tiny_checkpoint):
    result = CliRunner().invoke(app, ["--checkpoint", str(tiny_checkpoint), "--labels", "a,b", "--input", "-",
                                      "--format", "jsonl", "--threads", "1"], input=b"")
    assert result.exit_code == 0, result.stderr
    assert "nan" not in result.stderr.lower() and "latency: no window was classified" in result.stderr
    assert "windows 0, dropped 0" in result.stderr


def _piped_wav(path: Path, *args: str) -> bytes:
    """``path`` as ffmpeg writes a WAV to a pipe: it cannot seek back, so the sizes in the header are unknown."""
    require(shutil.which("ffmpeg"), "needs ffmpeg (scripts/test-deps.sh)")
    return subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), *args, "-f", "wav", "-"],
                          capture_output=True, check=True, timeout=60).stdout


def test_a_wav_piped_to_stdin_is_read_as_wav_at_its_own_rate_and_channels(long_clip, tmp_path, tiny_checkpoint):
    x = sf.read(long_clip, dtype="float32")[0][:8 * SAMPLE_RATE]
    stereo = np.stack([x, 0.5 * x], axis=1)
    path = tmp_path / "stereo48k.wav"
    sf.write(path, soxr.resample(stereo, SAMPLE_RATE, 48000), 48000, subtype="PCM_16")
    piped = _piped_wav(path, "-c:a", "pcm_s16le")
    assert piped[:4] == b"RIFF"
    result = CliRunner().invoke(app, ["--checkpoint", str(tiny_checkpoint), "--labels", ",".join(LABELS),
                                      "--input", "-", "--format", "jsonl", "--hop", "1", "--threads", "1"],
                                input=piped)
    assert result.exit_code == 0, result.stderr
    assert "stdin (WAV, 48000 Hz, 2 ch)" in result.stderr
    by_stdin = windows_of(result.stdout)
    code, out, err = run_cli("--checkpoint", tiny_checkpoint, "--labels", ",".join(LABELS), "--input", path,
                             "--format", "jsonl", "--hop", "1")
    by_file = windows_of(out)
    assert len(by_stdin) == len(by_file) == 4  # 8 s read as 8 s, not as 2 x 48/44.1 times as many raw samples
    for a, b in zip(by_stdin, by_file):
        assert a["t_start"] == b["t_start"]
        np.testing.assert_allclose(list(a["probs"].values()), list(b["probs"].values()), atol=1e-5)


@pytest.mark.parametrize("codec, atol", [("pcm_s24le", 1e-5), ("pcm_f32le", 1e-6), ("pcm_u8", 1e-2)])
def test_stdin_wav_sample_formats_decode_like_libsndfile(codec, atol, tmp_path, clips_dir):
    x = sf.read(clips_dir / "cat_3-95694-A-5.wav", dtype="float32")[0]
    expected = np.stack([x, -0.5 * x], axis=1)
    clip = tmp_path / "stereo.wav"
    sf.write(clip, expected, SAMPLE_RATE, subtype="FLOAT")
    source = StdinSource(io.BytesIO(_piped_wav(clip, "-c:a", codec)))
    assert (source.rate, source.channels) == (44100.0, 2)
    got = np.concatenate([block for block, _ in source.blocks()])
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=atol)


def test_no_input_device_says_so_and_how_to_stream_a_file(tmp_path, tiny_checkpoint):
    """A stand-in ``sounddevice`` that lists what PortAudio lists on a machine without a sound card: nothing."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text(
        "class PortAudioError(Exception):\n    pass\n\n\n"
        "class default:\n    device = [-1, -1]\n\n\n"
        "def query_devices(kind=None):\n"
        "    if kind:\n        raise PortAudioError('Error querying device -1')\n    return []\n\n\n"
        "def query_hostapis():\n    return [{'name': 'ALSA'}]\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "audioclip.stream.cli"]
    listing = subprocess.run(cmd + ["--list-devices"], env=env, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and listing.stdout == ""
    assert "no audio input devices found" in listing.stderr and "--input FILE" in listing.stderr
    assert "--input -" in listing.stderr
    mic = subprocess.run(cmd + ["--checkpoint", str(tiny_checkpoint), "--labels", "a,b"], env=env,
                         capture_output=True, text=True, timeout=120)
    one_line_error(mic.returncode, mic.stderr, "no audio input devices found", "--input FILE", "--input -")


def test_a_head_fine_tuned_on_1_s_clips_streams_1_s_windows_unless_told_otherwise(tmp_path, long_clip):
    from audioclip.model import atomic_save, finetuned_checkpoint

    model = make_tiny_model()
    labels = ["meow", "bark"]
    with torch.no_grad():
        embeddings = model.encode_text(labels, "{}")
    path = tmp_path / "one-second.pt"
    atomic_save(finetuned_checkpoint(model, labels, embeddings, mode="cooperative", clip_samples=SAMPLE_RATE), path)
    code, out, err = run_cli("--checkpoint", path, "--input", long_clip, "--format", "jsonl", "--hop", "1")
    assert code == 0, err
    rows = windows_of(out)
    assert len(rows) == 14 and all(r["t_end"] - r["t_start"] == pytest.approx(1.0) for r in rows)
    assert "window 1 s: the length this head was fine-tuned on" in err
    code, out, err = run_cli("--checkpoint", path, "--input", long_clip, "--format", "jsonl", "--hop", "1",
                             "--window", "5")
    assert code == 0 and len(windows_of(out)) == 10
    assert "this head was fine-tuned on 1-s clips; windows of 5 s may score worse" in err
