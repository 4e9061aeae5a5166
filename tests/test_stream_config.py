"""StreamConfig's rules, their translation to flags, the event detector's per-label settings and level gating."""

import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pytest
import soundfile as sf

from audioclip.cli_common import error_line
from audioclip.model.constants import FRAME_LENGTH, SAMPLE_RATE
from audioclip.model.labels import MAX_WINDOW_SECONDS, ParameterError, window_samples
from audioclip.stream import EventDetector, FileSource, StreamConfig, run_stream


@pytest.mark.parametrize("fields, message", [
    ({"window": 0.01}, "window 0.01 s is 441 samples, shorter than one FBSP frame"),
    ({"window": 100000.0}, f"window: must be at most {MAX_WINDOW_SECONDS:g} s"),
    ({"window": float("nan")}, "window: must be a finite number"),
    ({"hop": -1}, "hop: must be positive, got -1"),
    ({"hop": 0.00001}, "hop: must be positive"),  # rounds to no sample
    ({"smooth": 0}, "smooth: must be at least 1, got 0"),
    ({"smooth": 1.5}, "smooth: must be a whole number"),
    ({"top_k": 0}, "top_k: must be at least 1"),
    ({"events": True, "min_windows": 0}, "min_windows: must be at least 1"),
    ({"events": True, "threshold": 1.0}, "threshold: must be between 0 and 1, got 1"),
    ({"events": True, "threshold": 0.3, "hysteresis": 0.3}, "hysteresis: must be at least 0 and below threshold"),
    ({"events": True, "hysteresis": -0.1}, "hysteresis: must be at least 0"),
    ({"min_dbfs": 3.0}, "min_dbfs: must be at most 0"),
    ({"duration": 0}, "duration: must be positive, got 0"),
    ({"events": "yes"}, "events: must be true or false"),
    ({"threshold": 0.7}, "threshold applies to events: add events"),
    ({"min_windows": 3}, "min_windows applies to events: add events"),
])
def test_each_rule_raises_once_naming_the_parameter(fields, message):
    with pytest.raises(ParameterError) as caught:
        StreamConfig(**fields)
    assert str(caught.value).startswith(message), str(caught.value)
    assert caught.value.parameter == message.split()[0].rstrip(":")


def test_defaults_derived_sizes_and_replace_validates_again():
    config = StreamConfig()
    assert (config.window, config.hop, config.smooth, config.events, config.threshold, config.hysteresis,
            config.min_windows, config.min_dbfs, config.top_k, config.duration, config.realtime) == \
        (5.0, 22440 / SAMPLE_RATE, 1, False, 0.5, 0.05, 1, None, 5, None, False)
    assert (config.window_samples, config.hop_samples, config.exact_windows) == (5 * SAMPLE_RATE, 22440, False)
    events = dataclasses.replace(config, events=True, threshold=0.8, min_windows=2, min_dbfs=-70.0)
    assert (events.threshold, events.min_windows, events.window) == (0.8, 2, 5.0)
    with pytest.raises(ParameterError, match="hop"):
        dataclasses.replace(config, hop=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.hop = 1.0


def test_window_bounds_are_one_frame_and_the_memory_cap():
    assert window_samples(FRAME_LENGTH / SAMPLE_RATE) == FRAME_LENGTH
    assert window_samples(MAX_WINDOW_SECONDS) == MAX_WINDOW_SECONDS * SAMPLE_RATE
    with pytest.raises(ParameterError, match="at most"):
        window_samples(MAX_WINDOW_SECONDS + 0.1)
    with pytest.raises(ParameterError, match="^clip_seconds 0.001 s"):
        window_samples(0.001, name="clip_seconds")


def test_a_hop_longer_than_the_window_warns_once_with_what_is_unheard():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        StreamConfig(window=2.0, hop=5.0)
        StreamConfig(window=2.0, hop=2.0)
    assert [str(w.message) for w in caught] == ["hop 5 s is longer than window 2 s: 3 s of every 5 s is never "
                                                "classified"]
    assert caught[0].filename == __file__  # points at the caller, not at the dataclass machinery


def test_parameter_names_become_flags_for_the_command_line():
    with pytest.raises(ParameterError) as caught:
        StreamConfig(top_k=0)
    assert error_line(caught.value) == "--top-k: must be at least 1, got 0"
    with pytest.raises(ParameterError) as caught:
        StreamConfig(threshold=0.7)
    assert error_line(caught.value) == "--threshold applies to events: add --events"
    assert error_line(caught.value, {"events": "events = true"}) == "--threshold applies to events: add events = true"
    assert error_line(ValueError("plain\nsecond line")) == "plain"


@pytest.mark.parametrize("args, flag", [
    (["--hop", "-1"], "--hop"),
    (["--window", "100000"], "--window"),
    (["--threshold", "0.7"], "--threshold"),
    (["--events", "--min-windows", "0"], "--min-windows"),
    (["--duration", "-1"], "--duration"),
])
def test_cli_reports_one_line_naming_the_flag_and_writes_nothing_on_stdout(args, flag, tmp_path):
    wav = tmp_path / "x.wav"
    sf.write(wav, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    proc = subprocess.run([sys.executable, "-m", "audioclip.stream.cli", "--labels", "a,b", "--input", str(wav),
                           "--format", "csv", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""  # no CSV header before the error
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}"), proc.stderr


def trace(detector: EventDetector, rows: list[list[float]]) -> list[tuple]:
    out = []
    for t, probs in enumerate(rows):
        out += [(e.kind, e.label, e.t, e.peak, e.mean) for e in detector.update(float(t), np.array(probs))]
    return out


def test_per_label_thresholds_start_when_reached_and_end_below_threshold_minus_hysteresis():
    d = EventDetector(["dog", "siren"], [0.6, 0.3], hysteresis=0.1)
    out = trace(d, [[0.6, 0.29], [0.55, 0.3], [0.49, 0.25], [0.1, 0.19]])
    assert out == [("start", "dog", 0.0, 0.6, None),  # 0.6 reaches 0.6 (>=)
                   ("start", "siren", 1.0, 0.3, None),
                   ("end", "dog", 2.0, 0.6, pytest.approx(0.575)),  # 0.49 < 0.5; mean of 0.6, 0.55
                   ("end", "siren", 3.0, 0.3, pytest.approx(0.275))]  # 0.25 stays inside (>= 0.2)
    assert d.counts == {"dog": 1, "siren": 1} and d.durations == {"dog": 2.0, "siren": 2.0}


def test_min_windows_needs_that_many_windows_in_a_row_and_the_event_starts_at_the_first():
    d = EventDetector(["dog"], 0.5, min_windows=3)
    out = trace(d, [[0.9], [0.8], [0.4], [0.6], [0.7], [0.8], [0.9], [0.2]])
    assert out == [("start", "dog", 3.0, 0.8, None),  # 0.9, 0.8 then a break; 3, 4, 5 in a row
                   ("end", "dog", 7.0, 0.9, pytest.approx(0.75))]  # mean of 0.6, 0.7, 0.8, 0.9
    assert [e.to_json() for e in d.close(8.0)] == []


def test_masked_labels_are_scored_but_never_raise_events():
    d = EventDetector(["dog", "speech"], 0.5, events=[True, False])
    out = trace(d, [[0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])
    assert [(kind, label) for kind, label, *_ in out] == [("start", "dog"), ("end", "dog")]
    assert d.counts["speech"] == 0


def test_detector_settings_are_checked_with_parameter_names():
    for kwargs, name in [({"threshold": [0.5]}, "threshold"), ({"threshold": [0.5, 1.2]}, "threshold"),
                         ({"threshold": [0.5, 0.2], "hysteresis": 0.2}, "hysteresis"),
                         ({"min_windows": 0}, "min_windows"), ({"events": [True]}, "events")]:
        with pytest.raises(ParameterError) as caught:
            EventDetector(["a", "b"], **kwargs)
        assert caught.value.parameter == name and str(caught.value).startswith(name)


def test_end_events_carry_the_mean_in_json_and_start_events_keep_their_keys():
    d = EventDetector(["dog"], 0.5)
    (start,) = d.update(1.0, np.array([0.75]))
    d.update(2.0, np.array([0.25 + 0.5]))
    (end,) = d.close(3.0)
    assert start.to_json() == {"event": "start", "label": "dog", "t": 1.0, "peak": 0.75}
    assert end.to_json() == {"event": "end", "label": "dog", "t": 3.0, "peak": 0.75, "mean": 0.75}


class LevelEngine:
    """``loud`` is twice the window's RMS level: uniform noise of amplitude 0.5 scores about 0.58."""

    labels = ["quiet", "loud"]

    def __init__(self):
        self.calls = 0

    def scores(self, batch):
        self.calls += 1
        loud = min(1.0, 2 * float(np.sqrt(np.mean(np.square(batch)))))
        probs = np.array([[1.0 - loud, loud]])
        return probs, probs


def test_quiet_windows_are_gated_counted_and_end_open_events(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.5, 0.5, 2 * SAMPLE_RATE)
    audio = np.concatenate([noise, np.zeros(2 * SAMPLE_RATE), noise]).astype(np.float32)
    path = tmp_path / "gaps.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")
    rows, engine = [], LevelEngine()
    config = StreamConfig(window=1.0, hop=1.0, events=True, min_dbfs=-60.0)
    stats, closing = run_stream(source=FileSource(path), classifier=engine, on_result=rows.append, config=config)
    assert stats.gated == 2 and stats.windows == len(rows) == engine.calls == 4
    assert [r.t_end for r in rows] == [1.0, 2.0, 5.0, 6.0]  # the silent windows are not emitted
    events = [(e.kind, e.label, e.t) for r in rows for e in r.events]
    assert events == [("start", "loud", 1.0), ("end", "loud", 3.0),  # ended by the first silent window
                      ("start", "loud", 5.0)]
    assert [(e.kind, e.t) for e in closing] == [("end", 6.0)]
    ungated, _ = run_stream(source=FileSource(path), classifier=LevelEngine(), on_result=lambda r: None,
                            config=dataclasses.replace(config, min_dbfs=None))
    assert (ungated.gated, ungated.windows) == (0, 6)


def test_the_exporter_checks_windows_with_the_same_rule(tmp_path):
    from audioclip.export import exporter
    for window, message in [(100.0, "window: must be at most 60 s"), (0.1, "window 0.1 s is 4410 samples, shorter "
                                                                            "than a dynamic-length graph takes")]:
        with pytest.raises(ParameterError) as caught:
            exporter.export_onnx(checkpoint="full", out=tmp_path / "out", window=window, dynamic_length=True)
        assert str(caught.value).startswith(message) and error_line(caught.value).startswith("--" + message)
    assert list(tmp_path.iterdir()) == []
