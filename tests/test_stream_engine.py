"""The inference thread under load: newest window wins, drops are counted, memory and latency stay bounded."""

import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from audioclip.model.constants import SAMPLE_RATE
from audioclip.stream import FileSource, StreamConfig, run_stream


class SlowEngine:
    """A stand-in classifier that takes ``seconds`` per window; probs say how loud the window is."""

    labels = ["quiet", "loud"]

    def __init__(self, seconds: float, fail_at: int | None = None):
        self.seconds, self.fail_at, self.calls = seconds, fail_at, 0
        self.longest = 0.0  # the longest call as it took on this machine (a loaded one sleeps longer)

    def scores(self, batch):
        self.calls += 1
        if self.calls == self.fail_at:
            raise ValueError("engine failed")
        t0 = time.monotonic()
        time.sleep(self.seconds)
        self.longest = max(self.longest, time.monotonic() - t0)
        rms = float(np.sqrt(np.mean(np.square(batch))))
        probs = np.array([[1.0 - rms, rms]])
        return probs, probs * 2 - 1


@pytest.fixture
def noise_file(tmp_path):
    path = tmp_path / "noise.wav"
    sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, 8 * SAMPLE_RATE).astype(np.float32), SAMPLE_RATE,
             subtype="FLOAT")
    return path


@pytest.mark.slow
def test_slow_engine_on_a_live_source_drops_old_windows_with_bounded_latency_and_memory(noise_file):
    rows = []
    engine = SlowEngine(0.35)
    tracemalloc.start()
    try:
        stats, _ = run_stream(source=FileSource(noise_file, realtime=True), classifier=engine,
                              on_result=rows.append, config=StreamConfig(window=2.0, hop=0.1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = round((8.0 - 2.0) / 0.1) + 1  # 61 windows in 8 s
    assert stats.windows == len(rows) == engine.calls and stats.windows + stats.dropped == total
    assert stats.dropped >= total // 2  # 0.35 s per window against a 0.1 s hop (a slower runner drops more)
    assert 5 <= stats.windows <= 25  # ~6 s of windows at one per 0.35 s at most, fewer on a loaded runner
    # each result comes at most the rest of one inference plus its own after its last sample (plus a
    # second's slack for thread hand-offs on a loaded runner): bounded, no growth over the stream, where
    # a queue of every window would lag by 15 s at the end
    latencies = [r.latency_ms for r in rows]
    assert max(latencies) < (2 * engine.longest + 1.0) * 1e3, (max(latencies), engine.longest)
    starts = [r.t_start for r in rows]
    assert starts == sorted(starts) and rows[-1].t_end == 8.0  # in order; the newest window is never lost
    # a queue of the 30-odd dropped 2-s windows would hold over 10 MB; the stream holds about one
    assert peak < 4 * 2**20, f"peak traced memory {peak / 2**20:.1f} MiB"


def test_files_read_as_fast_as_the_engine_goes_drop_nothing(noise_file):
    rows = []
    stats, _ = run_stream(source=FileSource(noise_file), classifier=SlowEngine(0.02), on_result=rows.append,
                          config=StreamConfig(window=2.0, hop=0.25))
    assert stats.dropped == 0 and stats.windows == len(rows) == 25
    assert [r.index for r in rows] == list(range(25))
    assert 0 < stats.rtf < 1 and stats.audio_seconds == 8.0


def test_an_engine_error_stops_the_stream_and_reaches_the_caller(noise_file):
    rows = []
    with pytest.raises(ValueError, match="engine failed"):
        run_stream(source=FileSource(noise_file), classifier=SlowEngine(0.0, fail_at=3), on_result=rows.append,
                   config=StreamConfig(window=1.0, hop=0.5))
    assert len(rows) == 2


class InterruptedSource:
    """Delivers ``seconds`` of audio in 0.1-s blocks at 5x real time, then acts as if Ctrl-C was pressed."""

    rate, channels, live, name, overflows = 48000.0, 2, True, "interrupted", 0

    def __init__(self, seconds: float):
        self.seconds, self.closed = seconds, False

    def blocks(self):
        try:
            block = np.full((4800, 2), 0.25, np.float32)
            for _ in range(int(self.seconds * 10)):
                time.sleep(0.02)
                yield block, time.monotonic()
            raise KeyboardInterrupt
        finally:
            self.closed = True


def test_ctrl_c_stops_cleanly_with_the_counts_so_far():
    rows, source = [], InterruptedSource(3.0)
    stats, _ = run_stream(source=source, classifier=SlowEngine(0.0), on_result=rows.append,
                          config=StreamConfig(window=1.0, hop=0.5, duration=10.0))
    assert source.closed
    assert stats.windows + stats.dropped <= 5 and stats.windows >= 1  # windows end at 1.0 ... 3.0 s at most
    assert stats.audio_seconds == pytest.approx(3.0, abs=0.05)  # the resampler's tail is not flushed
    assert rows[0].probs[1] == pytest.approx(0.25, abs=1e-3)  # 48 kHz stereo arrived as 44.1 kHz mono at its level


def test_duration_stops_a_stream():
    rows = []
    stats, _ = run_stream(source=InterruptedSource(10.0), classifier=SlowEngine(0.0), on_result=rows.append,
                          config=StreamConfig(window=1.0, hop=0.5, duration=2.0))
    assert stats.audio_seconds == 2.0
    assert rows[-1].t_end <= 2.0


def test_live_display_keeps_only_the_latest_events_and_the_summary_counts_gated_windows():
    import io

    from rich.console import Console

    from audioclip.stream import Event, EventDetector, StreamStats, WindowResult
    from audioclip.stream.outputs import RECENT_EVENTS, LiveDisplay, summary_lines

    out = io.StringIO()
    stats = StreamStats(windows=3, gated=2)
    display = LiveDisplay(Console(file=out, width=200), stats, source="test")
    result = WindowResult(0, 0.0, 1.0, ["a", "b"], np.array([0.9, 0.1]), np.array([0.3, 0.1]))
    result.events = [Event("start", "a", float(t), 0.9) for t in range(1000)]
    display(result)
    display.close()
    last_frame = out.getvalue().rsplit("audioclip-stream", 1)[1]
    assert last_frame.count("start a @") == RECENT_EVENTS and "@ 999.00 s" in last_frame
    assert len(display._recent_events) == RECENT_EVENTS  # memory stays bounded over a long stream
    detector = EventDetector(["a", "b"], [0.6, 0.7])
    lines = summary_lines(stats, detector)
    assert lines[0].startswith("windows 3, gated (quiet) 2, dropped 0") and lines[-1] == "events: none"
    assert summary_lines(StreamStats(), EventDetector(["a"], 0.6))[-1] == "events: none above 0.6"
