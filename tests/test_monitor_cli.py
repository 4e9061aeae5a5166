"""``audioclip-stream --config``: the service as a user runs it, killed and restarted by the tests;
its one-line errors; an RTSP source that goes away and comes back beside a source that never stops."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from audioclip.monitor.config import MonitorConfig
from audioclip.monitor.output import JsonlOutput
from audioclip.monitor.service import Monitor

from helpers import burst_wav, wait_until
from servers import Receiver, Subscriber

EXE = Path(sys.executable).with_name("audioclip-stream")


def write_config(path: Path, checkpoint: Path, wav: Path, db: Path, *, extra: str = "", loop: bool = True) -> Path:
    path.write_text(f"""
labels = ["cat", "rain"]
[model]
checkpoint = "{checkpoint}"
[defaults]
window = 1.0
hop = 0.5
threshold = 0.3
score = "softmax"
[[sources]]
name = "porch"
file = "{wav}"
loop = {str(loop).lower()}
realtime = {str(loop).lower()}
[store]
db = "{db}"
{extra}""")
    return path


def start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([str(EXE), "--config", str(config), "--format", "jsonl", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_open_event(db: Path, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    conn.row_factory = sqlite3.Row
                    found = conn.execute("SELECT * FROM events WHERE end_utc IS NULL AND last_seen_s >= 3").fetchall()
            except sqlite3.OperationalError:  # the schema is being created
                found = []
            if found:
                return dict(found[0])
        time.sleep(0.3)
    raise AssertionError("no open event reached the database")


def events(db: Path) -> list[dict]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM events ORDER BY id")]


@pytest.fixture
def loud(tmp_path) -> Path:
    return burst_wav(tmp_path / "loud.wav", pattern=((4.0, 0.3),))


@pytest.mark.slow
def test_sigterm_closes_open_events_and_exits_0(tmp_path, tiny_checkpoint, loud):
    db = tmp_path / "d.sqlite"
    proc = start(write_config(tmp_path / "m.toml", tiny_checkpoint, loud, db))
    try:
        wait_for_open_event(db, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (row,) = events(db)
    assert row["end_utc"] is not None and row["end_s"] >= 3
    lines = [json.loads(x) for x in out.splitlines()]
    assert [x["event"] for x in lines if "event" in x] == ["start", "end"]
    assert "porch: windows" in err and "Traceback" not in err


@pytest.mark.slow
def test_kill_9_leaves_a_sound_database_and_the_next_start_closes_the_event_everywhere(tmp_path, tiny_checkpoint,
                                                                                        loud, mosquitto):
    """After a crash the broker holds ``offline`` and the label's ``ON``; the next start closes the event in the
    database and publishes its end (the end JSON, ``OFF``) to MQTT and the webhook, once, with one log line."""
    db = tmp_path / "d.sqlite"
    hook = Receiver()
    sinks = f'[mqtt]\nurl = "{mosquitto.url}"\nprefix = "crash"\n[[webhooks]]\nurl = "{hook.url}/hook"\n'
    proc = start(write_config(tmp_path / "m.toml", tiny_checkpoint, loud, db, extra=sinks))
    try:
        open_row = wait_for_open_event(db, proc)
        label_topic = f"crash/porch/{open_row['label']}"
        wait_until(lambda: any(json.loads(body)["id"] == open_row["id"] for _, _, body in hook.requests), 10,
                   "the start at the webhook")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (row,) = events(db)
    assert row["id"] == open_row["id"] and row["end_utc"] is None  # visible while it was open
    crashed = Subscriber(mosquitto.port, ["crash/#"], "crash-after-kill")
    wait_until(lambda: crashed.payloads("crash/status") and crashed.payloads(label_topic), 10, "retained messages")
    assert ("crash/status", "offline", True) in crashed.messages  # the last will, retained
    assert (label_topic, "ON", True) in crashed.messages  # left on by the crash

    silent = burst_wav(tmp_path / "silent.wav", pattern=((1.0, 0.0),))
    again = subprocess.run([str(EXE), "--config", str(write_config(tmp_path / "m2.toml", tiny_checkpoint, silent, db,
                                                                   loop=False, extra=sinks)), "--format", "jsonl"],
                           capture_output=True, text=True, timeout=120)
    hook.close()
    assert again.returncode == 0, again.stderr
    first = events(db)[0]
    assert first["end_utc"] == first["last_seen_utc"]
    assert first["end_s"] == first["last_seen_s"] >= open_row["last_seen_s"]
    assert sum("left open" in line or "closed 1 open" in line for line in again.stderr.splitlines()) == 1
    ends = [json.loads(p) for p in crashed.payloads("crash/porch/events")]
    end = {"id": row["id"], "event": "end", "source": "porch", "label": row["label"], "start_utc": first["start_utc"],
           "end_utc": first["end_utc"], "start_s": first["start_s"], "end_s": first["end_s"]}
    assert [{k: e[k] for k in end} for e in ends] == [end]  # once
    assert crashed.payloads(label_topic)[-1] == "OFF"
    hooked = [json.loads(body) for _, _, body in hook.requests]
    assert [{k: e[k] for k in end} for e in hooked if e["event"] == "end"] == [end]
    assert [json.loads(x) for x in again.stdout.splitlines() if '"event"' in x][0]["id"] == row["id"]
    crashed.close()


@pytest.mark.slow
def test_sighup_reloads_labels_and_keeps_running_on_a_bad_file(tmp_path, tiny_checkpoint, loud):
    config = write_config(tmp_path / "m.toml", tiny_checkpoint, loud, tmp_path / "d.sqlite")
    proc = start(config)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in proc.stdout), daemon=True)
    reader.start()
    try:
        kept = wait_for_open_event(tmp_path / "d.sqlite", proc)
        proc.send_signal(signal.SIGHUP)  # the same file: the open event goes on, its id unchanged
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and events(tmp_path / "d.sqlite")[0]["last_seen_s"] < kept["last_seen_s"] + 2:
            time.sleep(0.3)
        (row,) = events(tmp_path / "d.sqlite")
        assert row["id"] == kept["id"] and row["end_utc"] is None and row["last_seen_s"] >= kept["last_seen_s"] + 2
        config.write_text(config.read_text().replace('["cat", "rain"]', '["dog bark", "siren", "rain"]'))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(list(x.get("probs", {})) == ["dog bark", "siren", "rain"]
                                                      for x in lines[-5:]):
            time.sleep(0.3)
        config.write_text(config.read_text() + "\n[[labels]]\n")  # labels twice: not valid TOML
        proc.send_signal(signal.SIGHUP)
        time.sleep(2.0)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    labelled = [list(x["probs"]) for x in lines if "probs" in x]
    assert labelled[0] == ["cat", "rain"] and labelled[-1] == ["dog bark", "siren", "rain"]
    assert sum("reload refused" in line for line in err.splitlines()) == 1
    assert sum("reloaded" in line for line in err.splitlines()) == 2  # the same file, then new labels


@pytest.mark.parametrize("text, expected", [
    ("[model\ncheckpoint = 1", "not valid TOML"),
    ('labels = ["a"]\n[[sources]]\nname = "x"\nfile = "y.wav"\ntreshold = 0.5', "sources[0].treshold: unknown key"),
    ('labels = ["a", "a"]\n[[sources]]\nname = "x"\nfile = "y.wav"', "labels[1].name: 'a' is given twice"),
    ('labels = ["a"]\n[[sources]]\nname = "x"\nurl = "gopher://host/x"', "gopher"),
    ('labels = [{name = "a", threshold = 1.5}]\n[[sources]]\nname = "x"\nfile = "y.wav"', "labels[0].threshold"),
])
def test_bad_configuration_is_one_line(tmp_path, text, expected):
    config = tmp_path / "monitor.toml"
    config.write_text(text)
    result = subprocess.run([str(EXE), "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and expected in result.stderr
    assert str(config) in result.stderr and result.stdout == ""


@pytest.mark.parametrize("flags, expected", [
    (["--threshold", "0.3", "--hysteresis", "0.3"],
     "--hysteresis: must be at least 0 and below threshold 0.3, got 0.3"),
    (["--min-windows", "0"], "--min-windows: must be at least 1, got 0"),
])
def test_the_event_flags_reach_the_monitors_configuration(tmp_path, loud, flags, expected):
    """Flags the user left out take the configuration's defaults; those given are checked there, by flag."""
    result = subprocess.run([str(EXE), "--input", str(loud), "--loop", "--labels", "a", *flags],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr == f"error: command line: {expected}\n", result.stderr


def test_flags_cannot_contradict_the_file(tmp_path, tiny_checkpoint, loud):
    config = write_config(tmp_path / "m.toml", tiny_checkpoint, loud, tmp_path / "d.sqlite")
    result = subprocess.run([str(EXE), "--config", str(config), "--labels", "a,b", "--hop", "1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--labels, --hop: not with --config" in result.stderr


@pytest.mark.slow
def test_rtsp_source_comes_back_and_the_other_source_never_stops(tmp_path, tiny_checkpoint, rtsp_server, loud):
    cfg = MonitorConfig.from_dict({
        "model": {"checkpoint": str(tiny_checkpoint)},
        "defaults": {"window": 1.0, "hop": 0.5},
        "labels": ["cat", "rain"],
        "sources": [{"name": "camera", "url": rtsp_server.url, "stall_seconds": 4.0},
                    {"name": "porch", "file": str(loud), "loop": True, "realtime": True}]})
    out = io.StringIO()
    monitor = Monitor(cfg, output=JsonlOutput(out))
    thread = threading.Thread(target=monitor.run)
    thread.start()

    def ends(source: str) -> list[float]:
        rows = [json.loads(x) for x in out.getvalue().splitlines()]
        return [r["t_end"] for r in rows if r["source"] == source and "t_end" in r]

    try:
        deadline = time.monotonic() + 60
        while len(ends("camera")) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(ends("camera")) >= 4
        rtsp_server.kill()
        killed = time.monotonic()
        porch_before = len(ends("porch"))
        # the camera stays down until the porch has given 8 more windows (4 s at a 0.5 s hop; a generous 30 s
        # allowed on a loaded runner), and for 5 s at least
        while len(ends("porch")) < porch_before + 8 and time.monotonic() < killed + 30:
            time.sleep(0.2)
        time.sleep(max(0.0, killed + 5.0 - time.monotonic()))
        porch_during = len(ends("porch"))
        rtsp_server.start()
        camera_before = len(ends("camera"))
        back = time.monotonic()
        while len(ends("camera")) < camera_before + 4 and time.monotonic() < back + 60:
            time.sleep(0.2)
    finally:
        monitor.stop()
        thread.join(30)
    camera = monitor.pipelines[0].source
    assert camera.reconnects == 1 and camera.seconds_lost > 3.0
    assert porch_during >= porch_before + 8  # the file source went on while the camera was down
    t = ends("camera")
    assert len(t) >= camera_before + 4 and t == sorted(t)
    assert t[camera_before] - t[camera_before - 1] > 3.0  # stream time jumps by the outage: no window spans it
