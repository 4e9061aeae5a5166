"""What passes between the monitor's pipelines, service and sinks is typed (monitor/messages.py): a kind string
or any other unknown payload is a programming error, refused where it is handed over, never stored or published."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from audioclip.monitor.events import DetectionEvent
from audioclip.monitor.messages import EventSeen, WindowClassified
from audioclip.monitor.output import JsonlOutput
from audioclip.monitor.service import Monitor, StoreSink
from audioclip.monitor.sink import QueueSink
from audioclip.monitor.store import EventStore
from audioclip.stream.postprocess import WindowResult

from helpers import event_rows, monitor_config

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


def test_an_unknown_payload_raises_and_reaches_no_sink(tmp_path, tiny_checkpoint):
    db = tmp_path / "d.sqlite"
    cfg = monitor_config(tmp_path, tiny_checkpoint, [{"name": "porch", "device": "default"}], store={"db": str(db)})
    out = io.StringIO()
    monitor = Monitor(cfg, output=JsonlOutput(out))
    monitor.store_sink = StoreSink(EventStore(db), embedding_model="tiny").start()
    published = []
    monitor.sinks = [QueueSink("probe", deliver=published.append).start()]  # what MQTT and webhooks would get
    start = DetectionEvent(1, "start", "porch", "cat", T0, 1.5, 0.8, 0.8)

    for bad in [("event", start), "event", start.to_json(), None]:
        with pytest.raises(TypeError, match="the monitor: expected WindowClassified, DetectionEvent"):
            monitor._emit(bad)
        with pytest.raises(TypeError, match="the database sink: expected DetectionEvent"):
            monitor.store_sink.put(bad)
    with pytest.raises(TypeError, match="MQTT and the webhooks: expected DetectionEvent; got EventSeen"):
        monitor._publish_event(EventSeen(1, T0, 2.0, 0.8, 0.8))

    result = WindowResult(0, 0.5, 1.5, ["cat", "rain"], np.array([0.8, 0.2]), np.array([0.3, 0.1]))
    monitor._emit(WindowClassified("porch", result))  # the output only
    monitor._emit(start)  # the database, the publishers and the output
    monitor._emit(EventSeen(1, T0, 2.0, 0.9, 0.85))  # the database only
    for sink in [*monitor.sinks, monitor.store_sink]:
        sink.close(5.0)

    assert published == [start]
    rows = event_rows(db)
    assert [(r["id"], r["label"], r["last_seen_s"], r["peak"]) for r in rows] == [(1, "cat", 2.0, 0.9)]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line.get("source") for line in lines] == ["porch", "porch"] and lines[1]["event"] == "start"
    assert monitor.store_sink.dropped == 0 and monitor.store_sink.delivered == 2
