"""Renderers of stream results: JSON lines, CSV, a rich live display, and the summary at exit."""

from __future__ import annotations

import csv
import json
import math
import threading
from collections import deque
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .engine import StreamStats
from .postprocess import Event, EventDetector, WindowResult


class JsonlWriter:
    """One JSON object per window (and per event) on ``out``, flushed line by line."""

    def __init__(self, out: TextIO):
        self.out = out

    def __call__(self, result: WindowResult) -> None:
        lines = [json.dumps(result.to_json())] + [json.dumps(e.to_json()) for e in result.events]
        self.out.write("\n".join(lines) + "\n")
        self.out.flush()

    def events(self, events: list[Event]) -> None:
        for event in events:
            self.out.write(json.dumps(event.to_json()) + "\n")
        self.out.flush()

    def close(self) -> None:
        pass


class CsvWriter:
    """The JSONL fields as columns: ``t_start, t_end, top, probs.<label>..., similarity.<label>..., latency_ms``.

    Events do not fit the rows: they go to ``event_out`` (stderr from the CLI).
    """

    def __init__(self, out: TextIO, labels: list[str], event_out: TextIO | None = None):
        self.out, self.event_out = out, event_out
        self._writer = csv.writer(out, lineterminator="\n")
        self._writer.writerow(["t_start", "t_end", "top", *(f"probs.{label}" for label in labels),
                               *(f"similarity.{label}" for label in labels), "latency_ms"])
        out.flush()

    def __call__(self, result: WindowResult) -> None:
        row = result.to_json()
        self._writer.writerow([row["t_start"], row["t_end"], row["top"], *row["probs"].values(),
                               *row["similarity"].values(), row["latency_ms"]])
        self.out.flush()
        self.events(result.events)

    def events(self, events: list[Event]) -> None:
        if self.event_out is not None:
            for event in events:
                self.event_out.write(json.dumps(event.to_json()) + "\n")
            self.event_out.flush()

    def close(self) -> None:
        pass


def _bar(fraction: float, width: int = 30) -> str:
    filled = max(0.0, min(1.0, fraction)) * width
    full = int(filled)
    return "█" * full + ("▌" if filled - full >= 0.5 else "") + " " * (width - full - (filled - full >= 0.5))


RECENT_EVENTS = 4
"""Events the live display shows (the latest)."""


def _level(db: float) -> Text:
    meter = _bar((db + 60.0) / 60.0 if math.isfinite(db) else 0.0, 20)
    return Text(f"input {meter} {db:6.1f} dBFS" if math.isfinite(db) else f"input {meter}   silent")


LISTENING_REFRESH_PER_SECOND = 4
"""How often the display redraws between windows (stream time and input level of the latest block)."""


class LiveDisplay:
    """A rich display: top-k bars, stream time, latency, RTF, drops, input level.

    Shown from the start: before the first window it says that it is listening, how much audio it
    has heard of the first window (``window``, seconds) and the input level of the latest block,
    redrawn a few times a second from ``stats``; then once per window. Log records reach the
    screen above the display only when the logging handler writes to the same ``console``
    (the CLI uses stderr for both): a line written around it would leave a stale frame behind.
    """

    def __init__(self, console: Console, stats: StreamStats, *, top_k: int = 5, source: str = "",
                 window: float | None = None):
        self.console, self.stats, self.top_k, self.source, self.window = console, stats, top_k, source, window
        self._lock = threading.Lock()
        self._recent_events: deque[Event] = deque(maxlen=RECENT_EVENTS)
        self._last: WindowResult | None = None
        self._live = Live(get_renderable=self._current, console=console, auto_refresh=True,
                          refresh_per_second=LISTENING_REFRESH_PER_SECOND, transient=False)
        self._live.start(refresh=True)

    def _current(self):
        return self._render(self._last)

    def _render(self, result: WindowResult | None):
        head = Text(f"audioclip-stream  {self.source}", style="bold")
        if result is None:
            first = f", first result at t = {self.window:.1f} s" if self.window else ""
            heard = Text(f"listening: t {self.stats.audio_seconds:.1f} s{first}", style="dim")
            return Group(head, heard, _level(self.stats.input_dbfs))
        table = Table.grid(padding=(0, 1))
        table.add_column(justify="right")
        table.add_column()
        table.add_column(justify="right")
        order = sorted(range(len(result.labels)), key=lambda i: -result.probs[i])[:self.top_k]
        for rank, i in enumerate(order):
            style = "bold green" if rank == 0 else ""
            table.add_row(Text(result.labels[i], style=style), Text(_bar(result.probs[i]), style=style or "cyan"),
                          Text(f"{result.probs[i]:6.1%}", style=style))
        s = self.stats
        status = Text(f"t {result.t_end:.2f} s  latency {result.latency_ms:.0f} ms  RTF {s.rtf:.3f}  "
                      f"windows {s.windows}  dropped {s.dropped}  overflows {s.overflows}")
        parts = [head, table, status, _level(result.level_db)]
        if self._recent_events:
            parts.append(Text("  ".join(f"{e.kind} {e.label} @ {e.t:.2f} s" for e in self._recent_events),
                              style="yellow"))
        return Group(*parts)

    def __call__(self, result: WindowResult) -> None:
        with self._lock:
            self._last = result
            self._recent_events.extend(result.events)
            self._live.refresh()

    def events(self, events: list[Event]) -> None:
        with self._lock:
            self._recent_events.extend(events)
            self._live.refresh()

    def close(self) -> None:
        self._live.stop()
        self.console.line()


def summary_lines(stats: StreamStats, detector: EventDetector | None = None) -> list[str]:
    """The summary printed when a stream stops (with ``detector``: its events)."""
    gated = f", gated (quiet) {stats.gated}" if stats.gated else ""
    lines = [
        f"windows {stats.windows}{gated}, dropped {stats.dropped}, input overflows {stats.overflows}, "
        f"audio {stats.audio_seconds:.2f} s",
        f"latency mean {stats.mean_latency_ms:.1f} ms, p95 {stats.p95_latency_ms:.1f} ms; "
        f"real-time factor {stats.rtf:.3f} (inference time per second of audio)"
        if stats.latencies_ms and stats.audio_seconds > 0 else "latency: no window was classified",
    ]
    if detector is not None:
        happened = [label for label in detector.labels if detector.counts[label]]
        if happened:
            lines.append("events: " + "; ".join(
                f"{label} x{detector.counts[label]} ({detector.durations[label]:.1f} s, "
                f"peak {detector.peaks[label]:.2f})" for label in happened))
        else:
            thresholds = set(detector.thresholds.values())
            lines.append(f"events: none above {thresholds.pop():g}" if len(thresholds) == 1 else "events: none")
    return lines
