"""Event clips on real files: length, content, cap, privacy mutes, atomic writes on a full or read-only disk,
retention."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioclip.monitor import clips as clips_module
from audioclip.monitor.clips import ClipFolderError, ClipRecorder, check_writable, enforce_retention, write_atomic
from audioclip.monitor.events import DetectionEvent
from audioclip.monitor.store import EventStore

SR = 44100
HOP = SR // 2  # the blocks the service pushes here: 0.5 s
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)
LSB = 1 / 32768


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(-0.5, 0.5, round(seconds * SR))).astype(np.float32)


def feed(recorder, signal, source="porch", upto=None, since=0.0):
    """Push ``signal[since:upto]`` (seconds) in 0.5-s blocks; return the results with the stream time each came at."""
    out = []
    stop = len(signal) if upto is None else round(upto * SR)
    for i in range(round(since * SR), stop, HOP):
        block = signal[i:min(i + HOP, stop)]
        t_end = (i + len(block)) / SR
        out += [(t_end, r) for r in recorder.push(source, block, t_end)]
    return out


def decode(path):
    data, rate = sf.read(path, dtype="float32")
    assert rate == SR and data.ndim == 1 and sf.info(path).format == "FLAC"
    return data


def leftovers(root: Path, pattern="*.tmp"):
    return sorted(p.name for p in root.rglob(pattern))


def test_clip_is_pre_roll_event_post_roll_and_decodes_to_the_pushed_samples(tmp_path):
    signal = noise(20)
    recorder = ClipRecorder(tmp_path, pre_roll=2.0, post_roll=2.0, max_seconds=60.0)
    assert feed(recorder, signal, upto=9.0) == []
    recorder.request(1, "porch", 5.3, 8.1, T0 + timedelta(seconds=5.3), label="dog")  # at the event's end
    ((t, (event_id, path, reason)),) = feed(recorder, signal, since=9.0)
    assert (event_id, reason) == (1, "ok")
    assert 8.1 + 2.0 + recorder.settle <= t < 8.1 + 2.0 + recorder.settle + HOP / SR  # written once settled
    assert path == str(tmp_path / "porch" / "2026-12-01" / "12-00-05_dog_1.flac")
    clip = decode(path)
    assert abs(len(clip) - (2.0 + 2.8 + 2.0) * SR) <= HOP
    np.testing.assert_allclose(clip, signal[round(3.3 * SR):round(3.3 * SR) + len(clip)], atol=LSB)
    assert leftovers(tmp_path) == []


def test_hold_waits_for_every_window_over_the_clip_to_be_classified(tmp_path):
    """Inference far behind the audio: the clip is written only when the windows over it are classified,
    so a privacy mute of its last window is in the file, not patched in afterwards."""
    signal = noise(30, seed=3)
    recorder = ClipRecorder(tmp_path, pre_roll=1.0, post_roll=1.0, max_seconds=60.0, hold=5.0)
    feed(recorder, signal, upto=6.0)
    recorder.request(1, "porch", 3.0, 5.0, T0, label="dog")
    assert feed(recorder, signal, since=6.0, upto=20.0) == []  # the audio is long there; the results are not
    recorder.classified("porch", 10.5)
    assert recorder.poll() == []  # a window ending at 11.0 still overlaps the clip's end (6.0)
    recorder.mute("porch", 5.5, 6.0)  # that window's privacy mute
    recorder.classified("porch", 11.0)
    ((event_id, path, reason),) = recorder.poll()
    clip = decode(path)
    assert event_id == 1 and reason == "muted for privacy: 0.50 s of 4.00 s" and len(clip) == 4 * SR
    assert not clip[round(3.5 * SR):].any() and clip[:round(3.5 * SR)].any()  # muted before it was written


def test_a_long_event_is_capped_keeping_its_start_and_memory_is_bounded(tmp_path):
    signal = noise(40, seed=1)
    recorder = ClipRecorder(tmp_path, pre_roll=2.0, post_roll=2.0, max_seconds=5.0)
    feed(recorder, signal, upto=4.5)
    recorder.request(1, "porch", 4.0, None, T0, label="dog")  # at its start, as a long event must be
    results = feed(recorder, signal, upto=20.0, since=4.5)
    ((t, (_, path, reason)),) = results
    assert t < 20.0 and reason == "capped at 5 s"  # written once its first 5 s were there, the event still on
    clip = decode(path)
    assert len(clip) == 5 * SR
    np.testing.assert_allclose(clip, signal[2 * SR:7 * SR], atol=LSB)
    recorder.request(1, "porch", 4.0, 30.0, T0, label="dog")  # the end comes: no second clip
    assert feed(recorder, signal, since=20.0) == [] and recorder.flush() == []
    # A request made only at the end of an event longer than the history: its start is gone.
    recorder.request(2, "porch", 5.0, 35.0, T0, label="dog")
    ((_, path, reason),) = recorder.flush()
    assert path is None and "history" in reason
    history = recorder._sources["porch"]
    assert history.data.nbytes == 2 * recorder.capacity <= 2 * (2 + 5 + 2 + 1) * SR + 2


def test_privacy_mutes_zero_the_audio_before_during_and_after_writing(tmp_path):
    signal = noise(20, seed=2)
    recorder = ClipRecorder(tmp_path)
    feed(recorder, signal, upto=6.0)
    recorder.mute("porch", 4.0, 5.0)  # in the history
    recorder.mute("porch", 5.5, 7.0)  # partly in samples still to come
    recorder.request(1, "porch", 5.0, 8.0, T0, label="dog")
    ((_, (_, path, reason)),) = feed(recorder, signal, upto=14.0, since=6.0)
    assert reason == "muted for privacy: 2.50 s of 7.00 s"  # what the event's clip_note says
    clip = decode(path)  # the clip is [3, 10)
    seconds = lambda a, b: clip[round((a - 3) * SR):round((b - 3) * SR)]  # noqa: E731
    assert not seconds(4.0, 5.0).any() and not seconds(5.5, 7.0).any()
    assert np.abs(seconds(3.0, 4.0)).mean() > 0.1  # the audio around the mutes is kept
    np.testing.assert_allclose(seconds(5.0, 5.5), signal[5 * SR:round(5.5 * SR)], atol=LSB)
    np.testing.assert_allclose(seconds(7.0, 10.0), signal[7 * SR:10 * SR], atol=LSB)
    recorder.mute("porch", 9.0, 9.5)  # a privacy window classified after the clip was written
    clip = decode(path)
    assert not seconds(9.0, 9.5).any()
    np.testing.assert_allclose(seconds(9.5, 10.0), signal[round(9.5 * SR):10 * SR], atol=LSB)
    assert recorder.poll() == [(1, path, "muted for privacy: 3.00 s of 7.00 s")]  # the note follows the file
    assert leftovers(tmp_path) == []


def test_gaps_are_silence_and_a_restarted_stream_writes_what_there_is(tmp_path):
    signal = noise(10, seed=3)
    recorder = ClipRecorder(tmp_path, settle=0.0)
    feed(recorder, signal, upto=4.0)
    feed(recorder, signal, since=6.0, upto=10.0)  # 4 s .. 6 s never came
    recorder.request(1, "porch", 3.0, 6.0, T0)
    ((_, path, reason),) = recorder.poll()
    clip = decode(path)  # [1, 8)
    assert reason == "ok" and len(clip) == 7 * SR
    assert not clip[3 * SR:5 * SR].any()
    np.testing.assert_allclose(clip[5 * SR:], signal[6 * SR:8 * SR], atol=LSB)
    recorder.request(2, "porch", 8.5, 9.0, T0 + timedelta(seconds=8.5))
    ((_, path, reason),) = recorder.push("porch", signal[:HOP], HOP / SR)  # the stream began again at 0
    assert "cut 1.00 s short" in reason and len(decode(path)) == round(3.5 * SR)  # [6.5, 10) of [6.5, 11)


def test_flush_writes_pending_clips_and_names_are_safe_for_any_text(tmp_path):
    recorder = ClipRecorder(tmp_path)
    for i, source in enumerate(("../../etc/pass wd", "a/b", "a:b", "Küche"), start=1):
        feed(recorder, noise(6), source=source)
        recorder.request(i, source, 3.0, 5.0, T0, label="dog/bark: ..")
    recorder.request(99, "nowhere", 1.0, 2.0, T0)
    recorder.request(98, "Küche", 5.0, None, T0)  # still open at shutdown
    results = {r.event_id: r for r in recorder.flush()}
    assert results[99].path is None and "no audio" in results[99].reason
    assert results.pop(98).reason == "the event was still open"
    assert len({Path(results[i].path).parent.parent for i in (1, 2, 3, 4)}) == 4  # "a/b" and "a:b" stay apart
    for r in results.values():
        if r.path:
            path = Path(r.path)
            assert path.parent.parent.parent == tmp_path and "cut" in r.reason  # inside root, short (stream ended)
            assert path.name.endswith(f"_{r.event_id}.flac") and "/" not in path.name and ":" not in path.name
            assert len(decode(path)) == 5 * SR  # [1, 6) of [1, 7)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs mounted for the test (needs root and mount rights), or ``None``."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        yield None
        return
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_leaves_no_partial_file_and_the_recorder_goes_on(tiny_tmpfs, tmp_path, monkeypatch, caplog):
    root = tiny_tmpfs or tmp_path / "clips"
    if tiny_tmpfs is None:  # no tmpfs to fill here: the encoder's write fails as a full disk would
        real_write = sf.write

        def full(file, *args, **kwargs):
            if full.fail:
                raise OSError(28, os.strerror(28))
            return real_write(file, *args, **kwargs)

        full.fail = True
        monkeypatch.setattr(clips_module.sf, "write", full)
    recorder = ClipRecorder(root)
    signal = np.concatenate([noise(10, seed=4), np.zeros(6 * SR, np.float32)])
    feed(recorder, signal, upto=10.0)  # noise: about 0.5 MB of FLAC for the clip below
    recorder.request(1, "porch", 3.0, 5.0, T0, label="dog")
    with caplog.at_level(logging.WARNING, logger="audioclip.monitor.clips"):
        (result,) = recorder.poll()
    event_id, path, reason = result
    assert (event_id, path) == (1, None) and "No space left on device" in reason
    assert result.cause == "write_failed"  # what audioclip_clips_not_written_total counts it under
    assert [r.getMessage().count("\n") for r in caplog.records] == [0]
    assert "event 1" in caplog.records[0].getMessage()
    assert [p for p in root.rglob("*") if not p.is_dir()] == []  # no temporary file, no partial clip
    assert not (root / "porch" / "2026-12-01").exists()  # nor the day folder made for it
    if tiny_tmpfs is None:
        full.fail = False
    feed(recorder, signal, since=10.0)  # silence compresses to a few KB: it fits
    recorder.request(2, "porch", 12.0, 13.0, T0 + timedelta(seconds=12))
    ((_, path, reason),) = recorder.flush()
    assert reason == "ok" and len(decode(path)) == 5 * SR


def test_the_service_records_and_counts_a_clip_a_full_disk_stopped(tiny_tmpfs, tmp_path, tiny_checkpoint, monkeypatch):
    """Through the monitor: the event is stored, its ``clip`` NULL, ``clip_note`` says why, the metric counts it."""
    from helpers import burst_wav, event_rows, monitor_config, run_monitor
    from servers import free_port

    root = tiny_tmpfs or tmp_path / "clips"
    if tiny_tmpfs is None:  # no tmpfs to fill here: the encoder's write fails as a full disk would

        def full(file, *args, **kwargs):
            raise OSError(28, os.strerror(28))

        monkeypatch.setattr(clips_module.sf, "write", full)
    wav = burst_wav(tmp_path / "a.wav", pattern=((1.0, 0.0), (4.0, 0.3), (4.0, 0.0)), seed=9)  # noise: 0.5 MB FLAC
    db = tmp_path / "d.sqlite"
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(wav), "realtime": False}],
                         store={"db": str(db), "clips": str(root)}, metrics={"listen": f"127.0.0.1:{free_port()}"})
    monitor, _ = run_monitor(cfg)
    (row,) = event_rows(db)
    assert row["end_utc"] is not None and row["clip"] is None
    assert row["clip_note"].startswith("cannot write ") and "No space left on device" in row["clip_note"]
    count = monitor.metrics.registry.get_sample_value
    assert count("audioclip_clips_not_written_total", {"cause": "write_failed"}) == 1
    assert count("audioclip_clips_not_written_total", {"cause": "no_audio"}) == 0
    assert leftovers(root) == []


def test_a_folder_made_read_only_mid_way_is_reported_and_nothing_is_left(tiny_tmpfs, tmp_path):
    if os.getuid() != 0:
        root = tmp_path / "clips"
        make_read_only = lambda: os.chmod(root / "porch" / "2026-12-01", 0o555)  # noqa: E731
    elif tiny_tmpfs is not None:  # as root, permissions do not stop writes: the file system turns read-only
        root = tiny_tmpfs
        make_read_only = lambda: subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)  # noqa: E731
    else:
        pytest.skip("running as root without the right to mount a file system to make read-only")
    recorder = ClipRecorder(root)
    signal = np.zeros(10 * SR, np.float32)
    feed(recorder, signal, upto=6.0)
    recorder.request(1, "porch", 2.0, 2.5, T0)
    ((_, first, reason),) = recorder.poll()
    assert reason == "ok"
    make_read_only()
    recorder.request(2, "porch", 3.0, 3.5, T0 + timedelta(seconds=3))
    ((_, (event_id, path, reason)),) = feed(recorder, signal, since=6.0)
    assert path is None and ("Read-only file system" in reason or "Permission denied" in reason)
    assert leftovers(root, "*.flac") == [Path(first).name] and leftovers(root) == []
    if tiny_tmpfs is not None:
        subprocess.run(["mount", "-o", "remount,rw", str(root)], check=True)


def test_check_writable_refuses_a_folder_that_cannot_be_written(tiny_tmpfs, tmp_path):
    assert check_writable(tmp_path / "new" / "clips") == (tmp_path / "new" / "clips").resolve()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ClipFolderError) as err:
        check_writable(a_file)
    assert str(err.value).startswith(f"{a_file}: clip folder is a file") and "\n" not in str(err.value)
    with pytest.raises(ClipFolderError, match="not writable"):
        check_writable(a_file / "clips")  # a folder inside a file cannot be made
    if tiny_tmpfs is not None:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
        with pytest.raises(ClipFolderError, match="Read-only file system"):
            check_writable(tiny_tmpfs)
        subprocess.run(["mount", "-o", "remount,rw", str(tiny_tmpfs)], check=True)
    elif os.getuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        with pytest.raises(ClipFolderError, match="Permission denied"):
            check_writable(locked)


def write_clips(root: Path, ages_days, now):
    """A real FLAC clip per age, one day folder each; return ``(id, path)`` pairs, oldest first."""
    pairs = []
    for i, age in enumerate(ages_days, start=1):
        day = datetime.fromtimestamp(now - age * 86400, timezone.utc)
        path = root / "porch" / f"{day:%Y-%m-%d}" / f"{day:%H-%M-%S}_dog_{i}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (noise(2, seed=i) * 32767).astype(np.int16), SR)
        os.utime(path, (now - age * 86400, now - age * 86400))
        pairs.append((i, str(path)))
    return pairs


def test_retention_deletes_the_oldest_until_the_total_fits_and_rows_stay(tmp_path):
    now = time.time()
    pairs = write_clips(tmp_path, [4, 3, 2, 1], now)
    sizes = [Path(p).stat().st_size for _, p in pairs]
    with EventStore(tmp_path / "e.sqlite") as store:
        for (i, path), age in zip(pairs, [4, 3, 2, 1]):
            start = datetime.fromtimestamp(now - age * 86400, timezone.utc)
            store.record(DetectionEvent(i, "end", "porch", "dog", start, 0.0, 0.9, 0.8, start, 1.0))
            store.set_clip(i, path)
        max_gb = (sizes[2] + sizes[3]) / 1e9  # room for the two newest
        recorder = ClipRecorder(tmp_path)
        deleted = recorder.enforce_retention(store, keep_days=30, max_gb=max_gb, now=now)
        assert deleted == [1, 2]
        store.clear_clips(deleted)
        assert store.clips_by_age() == pairs[2:]
        assert len(store.events()) == 4  # the rows stay
    assert [Path(p).exists() for _, p in pairs] == [False, False, True, True]
    assert not Path(pairs[0][1]).parent.exists() and Path(pairs[2][1]).parent.exists()  # empty day folders go
    assert enforce_retention(tmp_path, pairs[2:], keep_days=30, max_gb=max_gb, now=now) == []


def test_retention_by_age_clears_missing_files_and_stale_temporaries(tmp_path):
    now = time.time()
    pairs = write_clips(tmp_path, [10, 5, 0.5], now)
    Path(pairs[2][1]).unlink()  # a clip someone deleted by hand
    stale = tmp_path / "porch" / ".12-00-00_dog_9.flac.123.tmp"
    fresh = tmp_path / "porch" / ".12-00-01_dog_10.flac.123.tmp"
    for path, age in ((stale, 7200), (fresh, 10)):
        path.write_bytes(b"partial")
        os.utime(path, (now - age, now - age))
    assert enforce_retention(tmp_path, pairs, keep_days=7, max_gb=None, now=now) == [1, 3]
    assert [Path(p).exists() for _, p in pairs] == [False, True, False]
    assert not stale.exists() and fresh.exists()


def test_a_stalled_clip_writer_delays_and_drops_no_window_and_writes_every_clip_once_released(tmp_path, tiny_checkpoint,
                                                                                             monkeypatch):
    """The clips are written on the clip sink's thread: a disk that hangs for seconds holds up no window of a paced
    source (no drop, no latency of the stall's size), and the clips all come out once it answers again."""
    import threading

    from audioclip.monitor.service import Monitor

    from helpers import burst_wav, event_rows, monitor_config

    wav = burst_wav(tmp_path / "porch.wav", pattern=((0.5, 0.0), (1.0, 0.3), (1.0, 0.0), (5.0, 0.3), (1.0, 0.0)))
    db, root = tmp_path / "d.sqlite", tmp_path / "clips"
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(wav), "realtime": True}],
                         store={"db": str(db), "clips": str(root), "pre_roll": 0.5, "post_roll": 0.5})
    release, stalled = threading.Event(), []
    real_write = clips_module.write_atomic

    def stalled_write(path, data, sample_rate):  # the disk hangs until the test releases it
        stalled.append(time.monotonic())
        release.wait()
        real_write(path, data, sample_rate)

    monkeypatch.setattr(clips_module, "write_atomic", stalled_write)

    class Windows:
        def __init__(self):
            self.results = []  # (when it came, WindowResult)

        def window(self, source, result):
            self.results.append((time.monotonic(), result))

        def event(self, event):
            pass

        def refresh(self, pipelines):
            pass

        def close(self):
            pass

    output = Windows()
    monitor = Monitor(cfg, output=output)
    runner = threading.Thread(target=monitor.run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not (monitor.pipelines and monitor.pipelines[0].finished.is_set()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert monitor.pipelines[0].finished.is_set(), "the paced source did not end"
        assert stalled, "no clip was being written while the source played"
        stall = time.monotonic() - stalled[0]
        during = [r for t, r in output.results if t > stalled[0]]
    finally:
        release.set()
        runner.join(60)
    assert not runner.is_alive()

    pipeline = monitor.pipelines[0]
    counters = monitor.scheduler.counters("porch")
    assert stall > 3.0 and len(during) >= 3  # the disk hung for seconds while windows kept coming
    assert pipeline.windows == 16 and counters.dropped == 0 and counters.errors == 0  # 8.5 s: windows end 1.0 .. 8.5
    assert counters.processed == len(output.results) == pipeline.windows - pipeline.gated
    assert max(r.latency_ms for _, r in output.results) < 2000  # none waited for the disk (hung over 3 s)
    rows = event_rows(db)
    assert len(rows) >= 2 and len(stalled) == len(rows)
    for row in rows:
        assert row["clip"] is not None, row
        assert row["clip_note"] in (None, "cut 0.50 s short (the stream ended)"), row  # the last: no post-roll came
        assert len(decode(row["clip"])) > SR  # the event's window(s) and the rolls
    assert monitor.clips.dropped == 0 and monitor.clips.pending == 0
