"""The monitor end to end, in process: several sources through one tiny model into a real SQLite
file, FLAC clips, a real mosquitto broker and a scraped metrics endpoint; privacy, reload, outages."""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from audioclip.audio import AudioFileError
from audioclip.model.constants import SAMPLE_RATE, STRIDE_SAMPLES
from audioclip.monitor.clips import ClipFolderError
from audioclip.monitor.config import MonitorConfig, load_config
from audioclip.monitor.output import JsonlOutput
from audioclip.monitor.service import Monitor
from audioclip.stream.incremental import window_scorer

from helpers import burst_wav, event_rows, monitor_config, run_monitor


def test_two_sources_events_database_and_clips(tmp_path, tiny_checkpoint):
    a, b = burst_wav(tmp_path / "a.wav", seed=1), burst_wav(tmp_path / "b.wav", seed=2)
    db, clips = tmp_path / "d.sqlite", tmp_path / "clips"
    cfg = monitor_config(tmp_path, tiny_checkpoint,
                         [{"name": "porch", "file": str(a), "realtime": False},
                          {"name": "yard", "file": str(b), "realtime": False}],
                         store={"db": str(db), "clips": str(clips), "pre_roll": 1.0, "post_roll": 2.0})
    monitor, lines = run_monitor(cfg)

    windows = [x for x in lines if "t_start" in x]
    events = [x for x in lines if "event" in x]
    assert {w["source"] for w in windows} == {"porch", "yard"}
    for name in ("porch", "yard"):
        ts = [w["t_end"] for w in windows if w["source"] == name]
        assert ts == [2.5 + 0.5 * k for k in range(7)]  # windows with sound; the silent ones are gated
    assert monitor.pipelines[0].gated == 19 - 7

    stored = event_rows(db)
    assert sorted((r["source"], r["label"]) for r in stored) == [("porch", "cat"), ("yard", "cat")]
    for r in stored:
        # from the start of the first window with sound ([1.5, 2.5]) to the end of the first silent one
        assert r["start_s"] == 1.5 and r["end_s"] == 6.0
        assert r["end_utc"] is not None and r["end_utc"] > r["start_utc"]
        starts = [e for e in events if e["id"] == r["id"] and e["event"] == "start"]
        ends = [e for e in events if e["id"] == r["id"] and e["event"] == "end"]
        assert len(starts) == 1 and len(ends) == 1 and ends[0]["mean"] == pytest.approx(r["mean"], abs=1e-6)
        audio, rate = sf.read(r["clip"], dtype="float32")
        assert rate == SAMPLE_RATE and r["clip"].endswith(".flac")
        assert Path(r["clip"]).is_relative_to(clips / r["source"])
        lo, hi = round((1.5 - 1.0) * SAMPLE_RATE), round((6.0 + 2.0) * SAMPLE_RATE)  # pre-roll, event, post-roll
        assert len(audio) == hi - lo and r["clip_note"] is None  # whole, nothing muted
        source = sf.read(a if r["source"] == "porch" else b, dtype="float32")[0]
        np.testing.assert_allclose(audio, source[lo:hi], atol=1 / 32768)


def test_a_monitor_makes_every_attribute_in_its_init(tmp_path, tiny_checkpoint):
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(burst_wav(tmp_path / "a.wav")),
                                                      "realtime": False}],
                         store={"db": str(tmp_path / "d.sqlite"), "clips": str(tmp_path / "clips")})
    fresh = set(vars(Monitor(cfg)))
    monitor, _ = run_monitor(cfg)
    assert set(vars(monitor)) <= fresh, set(vars(monitor)) - fresh
    assert monitor.labels == ["cat", "rain"] and monitor.scheduler is not None and monitor.stop_signal is None


def test_the_hop_hint_is_said_once_for_all_sources_and_names_the_config_key(tmp_path, tiny_checkpoint, caplog):
    a, b = burst_wav(tmp_path / "a.wav", seed=1), burst_wav(tmp_path / "b.wav", seed=2)
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(a), "realtime": False},
                                                     {"name": "yard", "file": str(b), "realtime": False}],
                         defaults={"window": 5.0, "hop": 0.5})  # windows that would share work at 0.50884 s
    path = str(tmp_path / "monitor.toml")  # --hop is refused beside --config: the hint names the file's key
    with caplog.at_level(logging.INFO, logger="audioclip.stream.incremental"):
        run_monitor(cfg, config_path=path)
    hints = [r.getMessage() for r in caplog.records if "not a multiple of" in r.getMessage() and r.levelno > 10]
    assert len(hints) == 1, hints
    assert f"hop = 0.50884 in {path}" in hints[0] and "--hop" not in hints[0], hints[0]


@pytest.mark.slow
def test_each_source_shares_work_between_overlapping_windows_with_the_results_of_whole_windows(
        tmp_path, tiny_checkpoint, monkeypatch):
    """At an aligned hop each source keeps its own incremental state: the same rows as whole windows."""
    import audioclip.monitor.service as service

    scorers = []

    def recording_scorer(classifier, stream, **kw):
        scorer = window_scorer(classifier, stream, **kw)
        scorers.append(scorer)
        return scorer

    monkeypatch.setattr(service, "window_scorer", recording_scorer)
    a, b = burst_wav(tmp_path / "a.wav", seed=1), burst_wav(tmp_path / "b.wav", seed=2)
    sources = [{"name": "porch", "file": str(a), "realtime": False},
               {"name": "yard", "file": str(b), "realtime": False}]
    hop = 2 * STRIDE_SAMPLES / SAMPLE_RATE
    results = {}
    for exact in (True, False):
        defaults = {"window": 2.0, "hop": hop, "threshold": 0.3, "min_dbfs": -60.0, "exact_windows": exact,
                    "score": "softmax"}
        cfg = monitor_config(tmp_path, tiny_checkpoint, sources, defaults=defaults)
        _, lines = run_monitor(cfg)
        results[exact] = [x for x in lines if "t_start" in x]
    assert scorers[:2] == [None, None]  # exact windows
    assert len(scorers) == 4 and all(s is not None for s in scorers[2:])
    whole, shared = results[True], results[False]
    assert len(whole) == len(shared) > 40
    for w, s in zip(sorted(whole, key=lambda x: (x["source"], x["t_start"])),
                    sorted(shared, key=lambda x: (x["source"], x["t_start"]))):
        assert (w["source"], w["t_start"], w["t_end"], w["top"]) == (s["source"], s["t_start"], s["t_end"], s["top"])
        np.testing.assert_allclose(list(s["probs"].values()), list(w["probs"].values()), atol=1e-6)
    for scorer in scorers[2:]:  # the first window after silence (a gated gap) is whole, the rest shared
        assert scorer.encoder.incremental_windows > 3 * scorer.encoder.full_windows


def test_privacy_label_mutes_the_clip(tmp_path, tiny_checkpoint):
    """The tiny model's top label is 'cat' on noise: with privacy on it, the clip holds no sound of it."""
    a = burst_wav(tmp_path / "a.wav")
    db = tmp_path / "d.sqlite"
    d = {"model": {"checkpoint": str(tiny_checkpoint)},
         "defaults": {"window": 1.0, "hop": 0.5, "threshold": 0.3, "min_dbfs": -60.0, "score": "softmax"},
         "labels": [{"name": "cat", "privacy": True}, {"name": "rain"}],
         "sources": [{"name": "porch", "file": str(a), "realtime": False}],
         "store": {"db": str(db), "clips": str(tmp_path / "clips")}}
    run_monitor(MonitorConfig.from_dict(d))
    (r,) = event_rows(db)
    audio, _ = sf.read(r["clip"], dtype="float32")
    assert np.abs(audio).max() == 0.0  # every window with sound was won by the private label
    assert len(audio) == 8 * SAMPLE_RATE  # [0, 8): from the start of the stream to post_roll after the end at 6
    assert r["clip_note"] == "muted for privacy: 4.00 s of 8.00 s"  # the windows with sound, [1.5, 5.5): says why


def test_event_false_labels_are_scored_not_events(tmp_path, tiny_checkpoint):
    a = burst_wav(tmp_path / "a.wav")
    d = {"model": {"checkpoint": str(tiny_checkpoint)},
         "defaults": {"window": 1.0, "hop": 0.5, "threshold": 0.3, "min_dbfs": -60.0, "score": "softmax"},
         "labels": [{"name": "cat", "event": False}, {"name": "rain"}],
         "sources": [{"name": "porch", "file": str(a), "realtime": False}]}
    _, lines = run_monitor(MonitorConfig.from_dict(d))
    assert any("t_start" in x and x["top"] == "cat" for x in lines)
    assert not [x for x in lines if "event" in x]


@pytest.mark.slow
def test_reload_changes_labels_and_refuses_a_bad_file(tmp_path, tiny_checkpoint, caplog):
    a = burst_wav(tmp_path / "a.wav", pattern=((3.0, 0.3),))
    toml = tmp_path / "monitor.toml"

    def write(labels: str) -> None:
        toml.write_text(f'labels = {labels}\n[model]\ncheckpoint = "{tiny_checkpoint}"\n[defaults]\nwindow = 1.0\n'
                        'hop = 0.5\n'
                        f'[[sources]]\nname = "loop"\nfile = "{a}"\nloop = true\nrealtime = true\n')

    write('["cat", "rain"]')
    out = io.StringIO()
    monitor = Monitor(load_config(toml), output=JsonlOutput(out), config_path=str(toml))
    thread = threading.Thread(target=monitor.run)
    thread.start()
    try:
        def labels_seen():
            return [tuple(json.loads(x)["probs"]) for x in out.getvalue().splitlines() if '"t_start"' in x]

        deadline = time.monotonic() + 60
        while not labels_seen() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert labels_seen()[0] == ("cat", "rain")
        write('["dog bark", "siren", "rain"]')
        monitor.reload()
        while labels_seen()[-1] != ("dog bark", "siren", "rain") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert labels_seen()[-1] == ("dog bark", "siren", "rain")
        toml.write_text(toml.read_text() + "[defaults]\n")  # a duplicate table: not valid TOML
        monitor.reload()
        time.sleep(1.5)
        assert "reload refused" in caplog.text
        n = len(labels_seen())
        time.sleep(1.5)
        assert len(labels_seen()) > n and labels_seen()[-1] == ("dog bark", "siren", "rain")
    finally:
        monitor.stop()
        thread.join(20)
    assert not thread.is_alive()


def windows_counted(scraped: str) -> float:
    return sum(s.value for family in text_string_to_metric_families(scraped) for s in family.samples
               if s.name == "audioclip_windows_total")


@pytest.mark.slow
def test_mqtt_and_metrics_from_a_running_monitor(tmp_path, tiny_checkpoint, mosquitto):
    import paho.mqtt.client as mqtt

    from servers import free_port

    got: list[tuple[str, str, bool]] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload.decode(), m.retain))
    sub.connect(mosquitto.host, mosquitto.port)
    sub.subscribe([("svc/#", 1), ("homeassistant/#", 1)])
    sub.loop_start()
    try:
        a = burst_wav(tmp_path / "a.wav")
        db = tmp_path / "d.sqlite"
        cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(a), "realtime": True}],
                             store={"db": str(db)}, mqtt={"url": mosquitto.url, "prefix": "svc", "homeassistant": True},
                             metrics={"listen": f"127.0.0.1:{free_port()}"})
        monitor = Monitor(cfg, output=None)
        thread = threading.Thread(target=monitor.run)
        thread.start()
        scraped = None
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline:  # until 6 windows were counted (not in flight)
            time.sleep(0.5)
            if monitor.metrics is not None and monitor.pipelines and monitor.pipelines[0].windows >= 6:
                with urllib.request.urlopen(f"http://127.0.0.1:{monitor.metrics.port}/metrics", timeout=5) as r:
                    scraped = r.read().decode()
                if windows_counted(scraped) >= 6:
                    break
        thread.join(60)
        time.sleep(1.0)
    finally:
        sub.loop_stop()
        sub.disconnect()

    assert scraped is not None
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(scraped) for s in family.samples}
    assert samples[("audioclip_windows_total", (("source", "porch"),))] >= 6
    assert samples[("audioclip_gated_windows_total", (("source", "porch"),))] >= 3
    assert ("audioclip_inference_seconds_count", ()) in samples

    (r,) = event_rows(db)
    states = [p for t, p, _ in got if t == "svc/porch/cat"]
    assert states[:1] == ["OFF"] or "ON" in states
    assert states[-2:] == ["ON", "OFF"]
    events = [json.loads(p) for t, p, _ in got if t == "svc/porch/events"]
    assert [(e["event"], e["id"]) for e in events] == [("start", r["id"]), ("end", r["id"])]
    assert events[1]["end_s"] == r["end_s"]
    assert any(t.startswith("homeassistant/binary_sensor/") and t.endswith("porch_cat/config") for t, _, _ in got)
    assert [p for t, p, _ in got if t == "svc/status"][-1] == "offline"


def test_unwritable_clip_folder_refused_at_start(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(burst_wav(tmp_path / "a.wav"))}],
                         store={"db": str(tmp_path / "d.sqlite"), "clips": str(blocker / "clips")})
    with pytest.raises(ClipFolderError, match="not-a-folder"):
        Monitor(cfg).run()
    assert not (tmp_path / "d.sqlite").exists()


def test_a_missing_file_source_is_refused_before_the_database_is_made(tmp_path, tiny_checkpoint):
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(tmp_path / "gone.wav")}],
                         store={"db": str(tmp_path / "d.sqlite")})
    with pytest.raises(AudioFileError, match="gone.wav: no such file"):
        Monitor(cfg).run()
    assert not (tmp_path / "d.sqlite").exists()


@pytest.mark.slow
def test_unreachable_broker_at_start_does_not_stop_the_service(tmp_path, tiny_checkpoint):
    from servers import free_port

    db = tmp_path / "d.sqlite"
    burst_wav(tmp_path / "a.wav")
    cfg = monitor_config(tmp_path, tiny_checkpoint,
                                 [{"name": "porch", "file": str(tmp_path / "a.wav"), "realtime": False}],
                                 store={"db": str(db)}, mqtt={"url": f"mqtt://127.0.0.1:{free_port()}"})
    t0 = time.monotonic()
    monitor, lines = run_monitor(cfg)
    assert time.monotonic() - t0 < 60
    stored = event_rows(db)
    assert len(stored) == 1 and stored[0]["end_utc"] is not None  # the database got the event regardless
    assert monitor.sinks[0].dropped >= 2  # the broker never came: its messages were dropped at close, counted
