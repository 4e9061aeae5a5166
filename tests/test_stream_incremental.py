"""audioclip-stream shares work between overlapping windows by default: the same results as whole windows."""

import json
import logging
import time

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from audioclip import ZeroShotClassifier
from audioclip.model.constants import SAMPLE_RATE, STRIDE_SAMPLES
from audioclip.model.labels import ParameterError
from audioclip.stream import StreamConfig, run_stream
from audioclip.stream.cli import app
from audioclip.stream.incremental import IncrementalScorer, window_scorer

from helpers import make_tiny_model

LABELS = ["cat", "thunder", "car horn", "alarm clock", "coughing", "dog"]


@pytest.fixture(scope="module")
def fourteen(clips_dir, tmp_path_factory):
    """14 s at 44.1 kHz mono, 16-bit: alarm clock, cat, then 4 s of coughing."""
    names = ("alarm_clock_3-120526-B-37.wav", "cat_3-95694-A-5.wav", "coughing_1-58792-A-24.wav")
    x = np.concatenate([sf.read(clips_dir / n, dtype="int16")[0] for n in names])[:14 * SAMPLE_RATE]
    path = tmp_path_factory.mktemp("audio") / "fourteen.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    return path


def jsonl(*args) -> tuple[list[dict], str]:
    result = CliRunner().invoke(app, [str(a) for a in args] + ["--format", "jsonl", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if "t_start" in line], result.stderr


def assert_same_lines(shared: list[dict], whole: list[dict]) -> None:
    assert len(shared) == len(whole) > 1
    for a, b in zip(shared, whole):
        assert (a["t_start"], a["t_end"], a["top"]) == (b["t_start"], b["t_end"], b["top"])
        assert list(a["probs"]) == list(b["probs"])
        assert max(abs(a["probs"][k] - b["probs"][k]) for k in a["probs"]) <= 1e-4
        assert max(abs(a["similarity"][k] - b["similarity"][k]) for k in a["similarity"]) <= 1e-4


@pytest.mark.slow
def test_default_hop_is_five_strides_and_the_cli_lines_equal_exact_windows(fourteen, tiny_checkpoint):
    assert StreamConfig().hop_samples == 5 * STRIDE_SAMPLES == 22440
    common = ("--checkpoint", tiny_checkpoint, "--labels", ",".join(LABELS), "--input", fourteen)
    shared, log = jsonl(*common)
    whole, _ = jsonl(*common, "--exact-windows")
    assert_same_lines(shared, whole)
    assert len(shared) == 18 and shared[1]["t_start"] == pytest.approx(22440 / SAMPLE_RATE, abs=1e-3)
    assert "share their front end to layer2" in log


@pytest.mark.slow
def test_golden_cli_lines_equal_exact_windows(fourteen, golden_dir):
    common = ("--checkpoint", golden_dir / "checkpoint.pt", "--labels", ",".join(LABELS), "--input", fourteen)
    shared, _ = jsonl(*common)
    whole, _ = jsonl(*common, "--exact-windows")
    assert_same_lines(shared, whole)
    assert len({row["top"] for row in whole}) > 1


def test_an_unaligned_hop_is_kept_with_one_line_naming_the_nearest_aligned_hop(fourteen, tiny_checkpoint):
    rows, log = jsonl("--checkpoint", tiny_checkpoint, "--labels", ",".join(LABELS), "--input", fourteen,
                      "--hop", "1")
    assert [row["t_start"] for row in rows] == [float(k) for k in range(10)]  # the hop given, unchanged
    lines = [line for line in log.splitlines() if "not a multiple of 4488" in line]
    assert len(lines) == 1, log
    assert "hop 1 s (44100 samples)" in lines[0] and "--hop 1.01769 (10 x 4488 samples)" in lines[0]
    assert "% less per window" in lines[0]


def test_the_hop_hint_names_the_config_key_when_running_from_a_file_and_is_said_once(caplog):
    classifier = ZeroShotClassifier(make_tiny_model(), LABELS)
    with caplog.at_level(logging.INFO, logger="audioclip.stream.incremental"):
        assert window_scorer(classifier, StreamConfig(hop=0.25), config_file="monitor.toml") is None
        assert window_scorer(classifier, StreamConfig(hop=0.25), config_file="monitor.toml", announce=False) is None
        assert window_scorer(classifier, StreamConfig(), config_file="monitor.toml", announce=False) is not None
    (hint,) = [r.getMessage() for r in caplog.records if "not a multiple" in r.getMessage()]
    assert "hop = 0.20354 in monitor.toml (2 x 4488 samples)" in hint and "--hop" not in hint, hint
    assert not any("share their front end" in r.getMessage() for r in caplog.records)  # a later source: DEBUG


def test_window_scorer_is_off_for_exact_windows_unaligned_hops_and_other_classifiers(caplog):
    classifier = ZeroShotClassifier(make_tiny_model(), LABELS)
    assert isinstance(window_scorer(classifier, StreamConfig()), IncrementalScorer)
    assert window_scorer(classifier, StreamConfig(exact_windows=True)) is None
    with caplog.at_level(logging.INFO, logger="audioclip.stream.incremental"):
        assert window_scorer(classifier, StreamConfig(hop=0.25)) is None
    assert "--hop 0.20354 (2 x 4488 samples)" in caplog.text
    assert window_scorer(object(), StreamConfig()) is None  # a classifier without an incremental path
    with pytest.raises(ParameterError, match="exact_windows"):
        StreamConfig(exact_windows="yes")


class Fast:
    """A live source that delivers a hop every 20 ms, faster than windows are classified: the stream drops
    windows (newest wins)."""

    rate, channels, live, name, overflows = float(SAMPLE_RATE), 1, True, "fast", 0

    def __init__(self, x: np.ndarray, block: int):
        self.x, self.block = x, block

    def blocks(self):
        for i in range(0, len(self.x), self.block):
            time.sleep(0.02)
            yield self.x[i:i + self.block, None], time.monotonic()


@pytest.mark.slow
def test_dropped_windows_of_a_live_source_still_equal_whole_windows(fourteen, caplog):
    """Newest window wins: the windows classified after a drop reuse what they share with the last one."""
    x = sf.read(fourteen, dtype="float32")[0]
    classifier = ZeroShotClassifier(make_tiny_model(), LABELS)
    config = StreamConfig(window=3.0, hop=STRIDE_SAMPLES / SAMPLE_RATE)
    rows = []
    with caplog.at_level(logging.INFO, logger="audioclip.stream.incremental"):
        stats, _ = run_stream(source=Fast(x, STRIDE_SAMPLES), classifier=classifier, on_result=rows.append,
                              config=config)
    assert "share their front end to layer2" in caplog.text
    assert stats.dropped > 0 and len(rows) > 2
    win = config.window_samples
    for row in rows:
        start = int(round(row.t_start * SAMPLE_RATE))
        probs, sims = classifier.scores(x[start:start + win])
        assert np.abs(row.probs - probs.numpy()[0]).max() <= 1e-4
        assert np.abs(row.similarity - sims.numpy()[0]).max() <= 1e-4
