"""What the monitor writes for a person or a pipe: JSON lines or CSV with the source's name, or a
live table with a row per source."""

from __future__ import annotations

import csv
import json
import threading
import time
from typing import TextIO

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ..stream.postprocess import WindowResult
from .events import DetectionEvent


class JsonlOutput:
    """One JSON object per window (``source`` first) and per event start and end (the sinks' body)."""

    def __init__(self, out: TextIO):
        self.out, self._lock = out, threading.Lock()

    def window(self, source: str, result: WindowResult) -> None:
        self._write({"source": source, **result.to_json()})

    def event(self, event: DetectionEvent) -> None:
        self._write(event.to_json())

    def _write(self, obj: dict) -> None:
        with self._lock:
            self.out.write(json.dumps(obj) + "\n")
            self.out.flush()

    def refresh(self, pipelines) -> None:
        pass

    def close(self) -> None:
        pass


class CsvOutput:
    """``source, t_start, t_end, top, probs.<label>..., latency_ms`` rows; events as JSON on ``event_out``."""

    def __init__(self, out: TextIO, labels: list[str], event_out: TextIO | None = None):
        self.out, self.event_out, self._lock = out, event_out, threading.Lock()
        self._writer = csv.writer(out, lineterminator="\n")
        self._labels = list(labels)
        with self._lock:
            self._writer.writerow(["source", "t_start", "t_end", "top", *(f"probs.{x}" for x in labels), "latency_ms"])
            out.flush()

    def window(self, source: str, result: WindowResult) -> None:
        if result.labels != self._labels:  # after a reload: the columns no longer fit; JSON lines do
            return
        row = result.to_json()
        with self._lock:
            self._writer.writerow([source, row["t_start"], row["t_end"], row["top"], *row["probs"].values(),
                                   row["latency_ms"]])
            self.out.flush()

    def event(self, event: DetectionEvent) -> None:
        if self.event_out is not None:
            with self._lock:
                self.event_out.write(json.dumps(event.to_json()) + "\n")
                self.event_out.flush()

    def refresh(self, pipelines) -> None:
        pass

    def close(self) -> None:
        pass


class LiveOutput:
    """A table refreshed twice a second: per source its state, top labels, level, windows, drops, events.

    Give it the console the log handler writes to (the CLI's stderr): Rich then prints each log line
    whole above the table; a line written to another stream around it would be glued to a row.
    """

    def __init__(self, console: Console, *, top_k: int = 3):
        self.console, self.top_k = console, top_k
        self._events: dict[str, int] = {}
        self._live = Live(Table(), console=console, auto_refresh=False, transient=False)
        self._live.start()
        self._shown = 0.0

    def window(self, source: str, result: WindowResult) -> None:
        pass

    def event(self, event: DetectionEvent) -> None:
        if event.kind == "start":
            self._events[event.source] = self._events.get(event.source, 0) + 1

    def refresh(self, pipelines) -> None:
        table = Table(box=None, pad_edge=False)
        for column in ("source", "state", "hears", "level", "windows", "dropped", "events"):
            table.add_column(column, justify="right" if column in ("level", "windows", "dropped", "events") else "left")
        for p in pipelines:
            state = getattr(p.source, "state", "ended" if p.finished.is_set() else "up")
            hears = ""
            if p.last is not None:
                order = np.argsort(p.last.probs)[::-1][:self.top_k]
                hears = ", ".join(f"{p.last.labels[i]} {p.last.probs[i]:.0%}" for i in order)
            level = f"{p.level:.0f} dB" if np.isfinite(p.level) else "silent"
            table.add_row(p.name, state, hears, level, str(p.windows),
                          str(p.scheduler.counters(p.name).dropped), str(self._events.get(p.name, 0)))
        self._live.update(table, refresh=True)
        self._shown = time.monotonic()

    def close(self) -> None:
        self._live.stop()


def summary_lines(monitor) -> list[str]:
    """What a stopped monitor did, a line per source: windows, drops, gating, outages, events."""
    lines = []
    for p in monitor.pipelines:
        counters = monitor.scheduler.counters(p.name)
        source = p.source
        outage = ""
        if hasattr(source, "reconnects"):
            outage = f", reconnects {source.reconnects}, {source.seconds_lost:.1f} s lost"
        lines.append(f"{p.name}: windows {p.windows}, classified {counters.processed}, dropped {counters.dropped}, "
                     f"gated {p.gated}, input overflows {source.overflows}{outage}, events {p.events}")
    return lines
