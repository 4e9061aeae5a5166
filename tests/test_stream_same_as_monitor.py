"""``audioclip-stream`` on a file and a one-source monitor on the same file give the same windows: one
per-window engine (stream/feed.py, stream/engine.py) under both, at 44.1 and 48 kHz, for an input
shorter than a window, with quiet windows gated, and for a paced (live) file whose windows are dropped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audioclip.monitor.config import MonitorConfig
from audioclip.monitor.service import Monitor
from audioclip.stream import FileSource, StreamConfig, run_stream
from audioclip.stream.backends import load_classifier
from audioclip.stream.cli import app

LABELS = ["cat", "dog", "siren"]


def noise_wav(path: Path, seconds: float, rate: int, seed: int = 0, quiet: tuple[float, float] | None = None) -> Path:
    """Noise whose loudness changes every 0.2 s, so that windows differ in level and scores; ``quiet``: seconds
    ``[a, b)`` of near silence (-100 dBFS)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    envelope = np.repeat(rng.uniform(0.02, 0.5, n // int(0.2 * rate) + 1), int(0.2 * rate))[:n]
    if quiet is not None:
        envelope[round(quiet[0] * rate):round(quiet[1] * rate)] = 1e-5
    sf.write(path, (envelope * rng.standard_normal(n)).astype(np.float32), rate, subtype="FLOAT")
    return path


# (file seconds, its rate, window, hop, realtime, (windows, the last one's end) expected: None when drops decide)
# and a quiet stretch gated by min_dbfs -60 (None: no gate)
CASES = {
    "44k1": (2.3, 44100, 0.5, 0.25, False, (8, 2.25)),
    # 3 s at 48 kHz is exactly 11 windows of 0.5 s a 0.25 s apart: the last one needs the resampler's tail
    "48k_last_window_at_the_end": (3.0, 48000, 0.5, 0.25, False, (11, 3.0)),
    "shorter_than_a_window": (0.3, 44100, 0.5, 0.25, False, (1, 0.3)),
    # paced like a live source, 50-ms blocks and a 20-ms hop: each block completes 2 or 3 windows, the newest wins
    "live_with_drops": (1.5, 44100, 0.5, 0.02, True, None),
    # windows 2..5 ([0.5, 1.0) to [1.25, 1.75)) lie in the quiet second: gated in both, not reported
    "48k_quiet_windows_gated": (2.5, 48000, 0.5, 0.25, False, (5, 2.5), (0.5, 1.75)),
}


def same_windows(a: list, b: list, key, realtime: bool, window: float, hop: float) -> tuple[list, list]:
    """The windows of ``a`` and ``b`` to compare, in pairs: all of them, in the same order, for a file read
    as fast as the engine goes. A paced (live) source offers the newest window of each 50-ms block; the
    inference thread may lose one more to timing (a newer one replaced it while the model was busy, the first
    window's warm-up), so there: the windows both kept, most of them, each the newest of its block."""
    keys_a, keys_b = [key(x) for x in a], [key(x) for x in b]
    if not realtime:
        assert keys_a == keys_b
        return a, b
    block, rate = 2205, 44100  # FileSource's 50-ms blocks
    newest = {round((((k * block - round(window * rate)) // round(hop * rate)) * round(hop * rate)
                     + round(window * rate)) / rate, 6) for k in range(1, 100)}
    assert {round(k[1], 6) for k in keys_a + keys_b} <= newest
    common = sorted(set(keys_a) & set(keys_b))
    assert len(common) >= 0.5 * max(len(a), len(b)) > 5
    return [x for x in a if key(x) in common], [x for x in b if key(x) in common]


@pytest.fixture(params=list(CASES))
def case(request, tmp_path):
    seconds, rate, window, hop, realtime, expected, *quiet = CASES[request.param]
    wav = noise_wav(tmp_path / f"{request.param}.wav", seconds, rate, quiet=quiet[0] if quiet else None)
    return wav, window, hop, realtime, expected, -60.0 if quiet else None


def cli(*args) -> tuple[list[dict], str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if '"t_start"' in line]
    return rows, result.stderr


def dropped(summary: str) -> int:
    return int(re.search(r"dropped (\d+)", summary).group(1))


def test_stream_and_one_source_monitor_give_the_same_jsonl_rows(case, tiny_checkpoint, tmp_path):
    wav, window, hop, realtime, expected, min_dbfs = case
    common = ["--input", wav, "--checkpoint", tiny_checkpoint, "--labels", ",".join(LABELS), "--window", window,
              "--hop", hop, "--threads", "1", "--format", "jsonl", "--score", "label",
              *(["--realtime"] if realtime else []), *(["--min-dbfs", min_dbfs] if min_dbfs is not None else [])]
    stream_rows, stream_log = cli(*common)
    monitor_rows, monitor_log = cli(*common, "--db", tmp_path / "events.sqlite")

    assert all(row.pop("source") == wav.stem for row in monitor_rows)
    if expected is not None:
        assert (len(stream_rows), stream_rows[-1]["t_end"]) == expected
    else:  # most windows are dropped: 2 or 3 per block, one offered
        assert dropped(stream_log) > len(stream_rows) and dropped(monitor_log) > len(monitor_rows)
    if min_dbfs is not None:  # the four windows inside the quiet second, in both summaries
        assert re.search(r"gated \(quiet\) (\d+)", stream_log).group(1) == "4"
        assert re.search(r"gated (\d+)", monitor_log).group(1) == "4"
    stream_rows, monitor_rows = same_windows(stream_rows, monitor_rows, lambda r: (r["t_start"], r["t_end"]),
                                             realtime, window, hop)
    for mine, theirs in zip(stream_rows, monitor_rows):
        assert mine["top"] == theirs["top"]
        for key in ("probs", "similarity"):
            assert list(mine[key]) == LABELS == list(theirs[key])
            np.testing.assert_allclose(list(mine[key].values()), list(theirs[key].values()), atol=1e-6)


class Collect:
    """A monitor output that keeps each window's result."""

    def __init__(self):
        self.results = []

    def window(self, source, result) -> None:
        self.results.append(result)

    def event(self, event) -> None:
        pass

    def refresh(self, pipelines) -> None:
        pass

    def close(self) -> None:
        pass


def test_stream_and_monitor_report_the_same_level_the_whole_window_rms(case, tiny_checkpoint):
    wav, window, hop, realtime, expected, min_dbfs = case
    classifier = load_classifier(checkpoint=str(tiny_checkpoint), labels=LABELS, threads=1)
    stream = []
    run_stream(source=FileSource(wav, realtime=realtime), classifier=classifier, on_result=stream.append,
               config=StreamConfig(window=window, hop=hop, min_dbfs=min_dbfs))
    output = Collect()
    Monitor(MonitorConfig.single(input=str(wav), labels=LABELS, checkpoint=str(tiny_checkpoint), window=window,
                                 hop=hop, threads=1, realtime=realtime, min_dbfs=min_dbfs, score="softmax"),
            output=output).run()

    stream, results = same_windows(stream, output.results, lambda r: (round(r.t_start, 6), round(r.t_end, 6)),
                                   realtime, window, hop)
    np.testing.assert_allclose([r.probs for r in stream], [r.probs for r in results], atol=1e-6)
    assert [r.level_db for r in stream] == pytest.approx([r.level_db for r in results], abs=1e-9)
    if not realtime:  # the level is the RMS of the whole window, the samples the model scored
        x, rate = sf.read(wav, dtype="float32")
        assert rate != 44100 or all(
            r.level_db == pytest.approx(20 * np.log10(np.sqrt(np.mean(np.square(
                x[round(r.t_start * rate):round(r.t_end * rate)], dtype=np.float64)))), abs=1e-4) for r in stream)
    assert len({round(r.level_db, 3) for r in stream}) > 1 or len(stream) == 1
