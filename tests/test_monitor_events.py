"""What an event's life looks like from outside, through the real service: a source that goes down or ends
ends its events at once (database, MQTT, webhooks, clip), a clip holds the window that triggered it."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.request

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import soundfile as sf
from prometheus_client.parser import text_string_to_metric_families

from audioclip.model.constants import SAMPLE_RATE
from audioclip.monitor.config import load_config
from audioclip.monitor.output import JsonlOutput
from audioclip.monitor.service import Monitor

from helpers import burst_wav, event_rows, monitor_config, run_monitor, wait_until
from servers import Receiver, RtspServer, free_port


class Running:
    """A :class:`Monitor` on a thread of its own, its JSON lines read as they come."""

    def __init__(self, cfg, **kwargs):
        self.out = io.StringIO()
        self.monitor = Monitor(cfg, output=JsonlOutput(self.out), **kwargs)
        self.thread = threading.Thread(target=self.monitor.run, daemon=True)
        self.thread.start()

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.out.getvalue().splitlines()]

    def windows(self, source: str) -> list[dict]:
        return [x for x in self.lines() if x.get("source") == source and "t_end" in x]

    def events(self, source: str, kind: str | None = None) -> list[dict]:
        return [x for x in self.lines() if x.get("source") == source and "event" in x
                and (kind is None or x["event"] == kind)]

    def stop(self) -> None:
        self.monitor.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


class Messages:
    """Every MQTT message under ``topics``, as ``(time.monotonic(), topic, payload, retain)``."""

    def __init__(self, broker, topics: list[str]):
        self.got: list[tuple[float, str, str, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self.got.append((time.monotonic(), m.topic, m.payload.decode(),
                                                                  m.retain))
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([(t, 1) for t in topics])
        self.client.loop_start()

    def payloads(self, topic: str, before: float = float("inf"), after: float = 0.0) -> list[str]:
        return [p for t, top, p, _ in list(self.got) if top == topic and after <= t < before]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def scrape(monitor: Monitor) -> dict:
    """The running monitor's metrics: ``(name, its one label's value or None) -> value``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor.metrics.port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {(s.name, next(iter(s.labels.values()), None)): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_clip_starts_pre_roll_before_the_first_window_over_the_threshold(tmp_path, tiny_checkpoint):
    """2-s windows at a 0.5-s hop: the first window with sound starts 1.5 s before the first one whose end
    the event used to start at; the clip's first samples are the file's at that window's start - pre_roll."""
    wav = burst_wav(tmp_path / "a.wav", pattern=((4.0, 0.0), (3.0, 0.3), (4.0, 0.0)), seed=3)
    db = tmp_path / "d.sqlite"
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(wav), "realtime": False}],
                         defaults={"window": 2.0, "hop": 0.5, "threshold": 0.3, "min_dbfs": -60.0, "score": "softmax"},
                         store={"db": str(db), "clips": str(tmp_path / "clips"), "pre_roll": 0.75, "post_roll": 0.5})
    _, lines = run_monitor(cfg)
    first = next(x for x in lines if "t_start" in x)  # the first window not gated: the first with sound
    assert (first["t_start"], first["t_end"]) == (2.5, 4.5)
    (row,) = event_rows(db)
    (start,) = [x for x in lines if x.get("event") == "start"]
    assert row["start_s"] == start["start_s"] == first["t_start"]
    assert row["end_s"] == 9.0  # the end of the first silent window, as before
    audio, _ = sf.read(row["clip"], dtype="float32")
    source, _ = sf.read(wav, dtype="float32")
    lo, hi = round((2.5 - 0.75) * SAMPLE_RATE), round((9.0 + 0.5) * SAMPLE_RATE)
    assert len(audio) == hi - lo
    np.testing.assert_allclose(audio, source[lo:hi], atol=1 / 32768)
    assert np.abs(audio[round(0.75 * SAMPLE_RATE) + 3 * SAMPLE_RATE // 2:][:100]).max() > 0.01  # the burst is in it


@pytest.mark.slow
def test_a_source_that_ends_ends_its_events_and_writes_their_clips_while_the_others_go_on(tmp_path, tiny_checkpoint):
    """A file read once and stdin end while a looped file goes on: their events end at their last window, at once."""
    loud = burst_wav(tmp_path / "loud.wav", pattern=((3.0, 0.3),), seed=4)
    piped = io.BytesIO(burst_wav(tmp_path / "piped.wav", pattern=((2.0, 0.3),), seed=5).read_bytes())  # then EOF
    db = tmp_path / "d.sqlite"
    cfg = monitor_config(tmp_path, tiny_checkpoint,
                         [{"name": "once", "file": str(loud), "realtime": False},
                          {"name": "pipe", "stdin": True},
                          {"name": "live", "file": str(loud), "loop": True, "realtime": True}],
                         store={"db": str(db), "clips": str(tmp_path / "clips"), "pre_roll": 1.0, "post_roll": 2.0})
    run = Running(cfg, stdin=piped)
    try:
        ended = {}
        deadline = time.monotonic() + 60
        while set(ended) != {"once", "pipe"} and time.monotonic() < deadline:
            time.sleep(0.2)
            ended = {r["source"]: r for r in (event_rows(db) if db.exists() else [])
                     if r["source"] in ("once", "pipe") and r["end_utc"] is not None and r["clip"] is not None}
        assert set(ended) == {"once", "pipe"}
        assert run.thread.is_alive() and not run.monitor.pipelines[2].finished.is_set()  # the looped file goes on
    finally:
        run.stop()
    for name, seconds in (("once", 3.0), ("pipe", 2.0)):
        row = ended[name]
        assert (row["start_s"], row["end_s"]) == (0.0, seconds)  # the last window ends where the audio does
        assert [x["event"] for x in run.events(name)] == ["start", "end"]
        audio, _ = sf.read(row["clip"], dtype="float32")
        assert len(audio) == round(seconds * SAMPLE_RATE)  # all of it: no pre-roll before 0, no post-roll after


@pytest.mark.slow
def test_an_rtsp_outage_ends_the_events_before_it_and_they_start_afresh_after(tmp_path, tiny_checkpoint, mosquitto):
    """A camera of steady noise (never gated: an event is always open) killed mid-event and started again."""
    rtsp_server = RtspServer(burst_wav(tmp_path / "noise.wav", pattern=((60.0, 0.3),), seed=6)).start()
    db = tmp_path / "d.sqlite"
    hook = Receiver()
    sub = Messages(mosquitto, ["gap/#", "homeassistant/binary_sensor/gap/#"])
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "camera", "url": rtsp_server.url, "stall_seconds": 4.0}],
                         defaults={"window": 1.0, "hop": 0.5, "threshold": 0.3, "score": "softmax"},
                         store={"db": str(db), "clips": str(tmp_path / "clips"), "pre_roll": 1.0, "post_roll": 0.5},
                         mqtt={"url": mosquitto.url, "prefix": "gap", "homeassistant": True},
                         webhooks=[{"url": hook.url + "/hook"}], metrics={"listen": f"127.0.0.1:{free_port()}"})
    run = Running(cfg)
    try:
        wait_until(lambda: len(run.windows("camera")) >= 4 and run.events("camera", "start"), 60, "an event")
        wait_until(lambda: sub.payloads("gap/camera/availability")[-1:] == ["online"], 5, "the camera online")
        assert scrape(run.monitor)[("audioclip_source_up", "camera")] == 1
        open_ids = {x["id"] for x in run.events("camera", "start")} - {x["id"] for x in run.events("camera", "end")}
        assert open_ids  # on steady noise the tiny model's 'cat' is always on
        killed = time.monotonic()
        rtsp_server.kill()  # its end may come before this returns
        wait_until(lambda: open_ids <= {x["id"] for x in run.events("camera", "end")}, 20, "the ends in the outage")
        wait_until(lambda: all(r["clip"] is not None for r in event_rows(db) if r["id"] in open_ids), 10, "clips")
        wait_until(lambda: "offline" in sub.payloads("gap/camera/availability", after=killed), 5, "the camera offline")
        wait_until(lambda: scrape(run.monitor)[("audioclip_source_up", "camera")] == 0, 5, "the up gauge at 0")
        assert scrape(run.monitor)[("audioclip_mqtt_connected", None)] == 1
        windows_before = len(run.windows("camera"))
        rtsp_server.start()
        restarted = time.monotonic()
        wait_until(lambda: len(run.events("camera", "start")) > len(open_ids) + len(
            [x for x in run.events("camera", "end") if x["id"] not in open_ids]), 60, "an event after the outage")
        wait_until(lambda: "online" in sub.payloads("gap/camera/availability", after=restarted), 5, "online again")
    finally:
        run.stop()
        sub.close()
        hook.close()
        rtsp_server.stop()

    lines = [x for x in run.lines() if x.get("source") == "camera"]
    rows = {r["id"]: r for r in event_rows(db)}
    for event_id in open_ids:
        end_at = next(i for i, x in enumerate(lines) if x.get("event") == "end" and x["id"] == event_id)
        end = lines[end_at]
        last_window = [x for x in lines[:end_at] if "t_end" in x][-1]
        assert end["end_s"] == last_window["t_end"] == rows[event_id]["end_s"]  # the last window before the gap
        assert last_window == run.windows("camera")[windows_before - 1]  # nothing classified between it and the gap
        label = end["label"]
        assert sub.payloads(f"gap/camera/{label}", before=restarted)[-1] == "OFF"  # during the outage
        posted = [json.loads(body) for _, _, body in hook.requests]
        assert [(x["event"], x["end_s"]) for x in posted if x["id"] == event_id][-1] == ("end", end["end_s"])
        audio, _ = sf.read(rows[event_id]["clip"], dtype="float32")
        lo = max(0.0, rows[event_id]["start_s"] - 1.0)
        assert end["end_s"] - lo <= len(audio) / SAMPLE_RATE <= end["end_s"] + 0.5 - lo  # up to the gap at most
    after = [x for x in lines if x.get("event") == "start" and x["id"] not in open_ids
             and x["start_s"] > max(rows[i]["end_s"] for i in open_ids)]
    first_after = run.windows("camera")[windows_before]
    assert after and min(x["start_s"] for x in after) >= first_after["t_start"]  # afresh: nothing carried over
    config = json.loads(sub.payloads("homeassistant/binary_sensor/gap/camera_cat/config")[-1])
    assert config["availability"] == [{"topic": "gap/status"}, {"topic": "gap/camera/availability"}]
    assert config["availability_mode"] == "all"
    lost = run.monitor.pipelines[0].source.seconds_lost
    assert lost > 0 and first_after["t_start"] - run.windows("camera")[windows_before - 1]["t_end"] >= lost - 1e-3


@pytest.mark.slow
def test_a_reload_keeps_the_events_of_unchanged_labels_and_clears_what_removed_labels_left(tmp_path, tiny_checkpoint,
                                                                                             mosquitto, caplog):
    """SIGHUP's reload with the same file keeps every open event (same ids); a changed label's event ends and a
    new one starts; a removed label's event ends and its retained state and discovery config are emptied."""
    caplog.set_level("INFO", "audioclip.monitor")
    loud = burst_wav(tmp_path / "loud.wav", pattern=((3.0, 0.3),), seed=7)
    toml = tmp_path / "monitor.toml"

    def write(labels: str) -> None:
        toml.write_text(f'labels = {labels}\n[model]\ncheckpoint = "{tiny_checkpoint}"\n'
                        '[defaults]\nwindow = 1.0\nhop = 0.5\nthreshold = 0.02\nhysteresis = 0.01\nscore = "softmax"\n'
                        f'[[sources]]\nname = "loop"\nfile = "{loud}"\nloop = true\n'
                        f'[mqtt]\nurl = "{mosquitto.url}"\nprefix = "hup"\nhomeassistant = true\n')

    def reload(labels: str) -> None:
        write(labels)
        done = caplog.text.count("reloaded")
        run.monitor.reload()
        wait_until(lambda: caplog.text.count("reloaded") > done, 10, "the reload")

    def open_ids() -> dict[str, int]:
        ends = {x["id"] for x in run.events("loop", "end")}
        return {x["label"]: x["id"] for x in run.events("loop", "start") if x["id"] not in ends}

    three = '["cat", "siren", {name = "speech", prompts = ["people talking", "speech"]}]'
    write(three)
    run = Running(load_config(toml), config_path=str(toml))
    try:  # at a threshold of 0.02 each of three labels is on all the time
        wait_until(lambda: set(open_ids()) == {"cat", "speech", "siren"}, 60, "three open events")
        before = open_ids()
        reload(three)  # the same file
        n = len(run.windows("loop"))
        wait_until(lambda: len(run.windows("loop")) >= n + 3, 10, "windows after the reload")
        assert open_ids() == before and not run.events("loop", "end")

        sub = Messages(mosquitto, ["hup/#", "homeassistant/binary_sensor/hup/#"])
        wait_until(lambda: sub.payloads("hup/loop/siren") == ["ON"], 5, "siren's retained ON")
        reload('["cat", {name = "speech", prompts = ["people talking", "speech"], threshold = 0.03}]')  # siren removed
        wait_until(lambda: "speech" in open_ids(), 10, "speech's new event")
        sub.close()
    finally:
        run.stop()
    ended = {x["label"]: x["id"] for x in run.events("loop", "end") if x["id"] in before.values()}
    assert ended["speech"] == before["speech"] and ended["siren"] == before["siren"]
    assert ended["cat"] == before["cat"]  # at the stop, not at either reload
    assert [x["id"] for x in run.events("loop", "end")][:2] in ([before["speech"], before["siren"]],
                                                                 [before["siren"], before["speech"]])
    assert sub.payloads("hup/loop/siren")[-2:] == ["OFF", ""]  # its last OFF, then the topic emptied
    assert sub.payloads("homeassistant/binary_sensor/hup/loop_siren/config")[-1] == ""
    late = Messages(mosquitto, ["hup/#", "homeassistant/binary_sensor/hup/#"])
    time.sleep(1.0)  # retained messages come at once on subscribing
    retained = {topic for _, topic, _, flag in late.got if flag}
    late.close()
    assert "hup/loop/cat" in retained and "homeassistant/binary_sensor/hup/loop_cat/config" in retained
    assert "hup/loop/siren" not in retained and "homeassistant/binary_sensor/hup/loop_siren/config" not in retained


@pytest.mark.slow
def test_no_home_assistant_sensor_for_a_label_that_never_raises_events(tmp_path, tiny_checkpoint, mosquitto):
    wav = burst_wav(tmp_path / "a.wav", pattern=((2.0, 0.3),), seed=8)
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "file": str(wav), "realtime": False}],
                         labels=[{"name": "speech", "event": False}, {"name": "rain"}],
                         mqtt={"url": mosquitto.url, "prefix": "noev", "homeassistant": True})
    run_monitor(cfg)
    late = Messages(mosquitto, ["homeassistant/binary_sensor/noev/#"])
    wait_until(lambda: late.got, 5, "the retained discovery")
    time.sleep(0.5)  # retained messages come together on subscribing
    late.close()
    configs = {topic for _, topic, payload, _ in late.got if payload}
    assert configs == {"homeassistant/binary_sensor/noev/porch_rain/config"}  # none for speech


class Poison:
    """An item whose first delivery ends the sink's thread (as a bug would); then it is an ordinary body."""

    def __init__(self):
        self.fired = False

    def to_json(self, clip_base: str | None = None) -> dict:
        if not self.fired:
            self.fired = True
            raise SystemExit("a bug in delivery")
        return {"poison": "delivered on the second try"}


@pytest.mark.slow
def test_the_service_loop_restarts_a_sink_thread_that_died(tmp_path, tiny_checkpoint, caplog):
    hook = Receiver()
    loud = burst_wav(tmp_path / "loud.wav", pattern=((3.0, 0.3),), seed=10)
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "loop", "file": str(loud), "loop": True}],
                         webhooks=[{"url": hook.url + "/hook"}])
    run = Running(cfg)
    try:  # 'cat' is on throughout: one start, no other event until the stop
        wait_until(lambda: len(hook.requests) == 1, 60, "the start at the webhook")
        sink = run.monitor.sinks[0]
        sink.put(Poison())
        wait_until(lambda: sink.restarts == 1, 5, "the restart, by the service's loop (nothing else was put)")
        wait_until(lambda: len(hook.requests) == 2, 5, "the item kept through the restart")
    finally:
        run.stop()
        hook.close()
    bodies = [json.loads(body) for _, _, body in hook.requests]
    assert [b.get("event", b.get("poison")) for b in bodies] == ["start", "delivered on the second try", "end"]
    assert "delivery thread had died; restarted it" in caplog.text
