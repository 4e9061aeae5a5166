"""The clips as a sink: the :class:`~audioclip.monitor.clips.ClipRecorder` on a thread of its own, fed
from a bounded queue like the database, MQTT and the webhooks, so that listening never waits on the
disk (encoding FLAC, fsync, a late privacy mute rewriting a written clip).

The pipelines (each source's audio, its gated windows, the source going down) and the inference
thread (each window's privacy mute and classified time, each event's request) put small typed
messages; the sink's thread applies them to the recorder in the order they were put, which is the
order the recorder saw them in when every thread called it under one lock, and hands each finished
:class:`~audioclip.monitor.clips.ClipResult` to ``done`` on its thread. A message the recorder
cannot apply (a bug) is logged and dropped, never retried: the recorder may have applied part of it.
When the queue is full the oldest message is dropped and counted (``dropped``), as in every sink.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

import numpy as np

from .clips import ClipRecorder, ClipResult
from .sink import QueueSink, Undeliverable

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
"""Messages the clip sink holds: about 8 minutes of one source's 50-ms blocks and its windows' messages."""


@dataclass(frozen=True)
class ClipAudio:
    """A block of a source's resampled mono audio whose end is stream second ``t_end``."""

    source: str
    samples: np.ndarray
    t_end: float


@dataclass(frozen=True)
class ClipMute:
    """Stream seconds ``[t0, t1)`` of ``source`` are muted for privacy."""

    source: str
    t0: float
    t1: float


@dataclass(frozen=True)
class ClipClassified:
    """Every window of ``source`` ending at or before stream second ``t`` is classified (or gated)."""

    source: str
    t: float


@dataclass(frozen=True)
class ClipRequest:
    """An event's clip: at its start (``end_s`` None) and again at its end."""

    event_id: int
    source: str
    start_s: float
    end_s: float | None
    start_utc: datetime
    label: str | None


@dataclass(frozen=True)
class ClipCut:
    """``source`` went down or ended at stream second ``t``: its pending clips are written with what there is."""

    source: str
    t: float
    why: str


@dataclass(frozen=True)
class ClipFlush:
    """The monitor stops: every pending clip is written with the audio there is."""


ClipMessage = ClipAudio | ClipMute | ClipClassified | ClipRequest | ClipCut | ClipFlush


class ClipSink(QueueSink):
    """Writes the events' clips on its own thread. Its methods mirror the recorder's and only queue a
    message; they never block. ``done(results)`` receives the finished clips, on the sink's thread."""

    def __init__(self, recorder: ClipRecorder, done: Callable[[list[ClipResult]], None], *,
                 queue_size: int = QUEUE_SIZE):
        super().__init__(f"clips {recorder.root}", queue_size=queue_size, backoff=(0.5, 30.0))
        self.recorder, self.done = recorder, done

    # -- the pipelines' and the inference thread's side -------------------------------------------
    def push(self, source: str, samples: np.ndarray, t_end_s: float) -> None:
        self.put(ClipAudio(source, np.array(samples, np.float32), t_end_s))  # a copy: the caller's buffer moves on

    def mute(self, source: str, t0: float, t1: float) -> None:
        self.put(ClipMute(source, t0, t1))

    def classified(self, source: str, t_s: float) -> None:
        self.put(ClipClassified(source, t_s))

    def request(self, event_id: int, source: str, start_s: float, end_s: float | None, start_utc: datetime,
                label: str | None = None) -> None:
        self.put(ClipRequest(event_id, source, start_s, end_s, start_utc, label))

    def cut(self, source: str, t_s: float, why: str = "the stream ended") -> None:
        self.put(ClipCut(source, t_s, why))

    def flush(self) -> None:
        self.put(ClipFlush())

    # -- the sink's thread --------------------------------------------------------------------------
    def deliver(self, item: ClipMessage) -> None:
        try:
            results = self._apply(item)
        except Exception as e:  # a bug, not a full disk (the recorder reports those as results): do not repeat it
            log.error("%s: %s failed", self.name, type(item).__name__, exc_info=True)
            raise Undeliverable(f"{type(item).__name__}: {e}") from e
        if results:
            self.done(results)

    def _apply(self, item: ClipMessage) -> list[ClipResult]:
        recorder = self.recorder
        if isinstance(item, ClipAudio):
            return recorder.push(item.source, item.samples, item.t_end)
        if isinstance(item, ClipMute):
            recorder.mute(item.source, item.t0, item.t1)
        elif isinstance(item, ClipClassified):
            recorder.classified(item.source, item.t)
        elif isinstance(item, ClipRequest):
            recorder.request(item.event_id, item.source, item.start_s, item.end_s, item.start_utc, label=item.label)
        elif isinstance(item, ClipCut):
            return recorder.cut(item.source, item.t, item.why)
        elif isinstance(item, ClipFlush):
            return recorder.flush()
        else:
            raise TypeError(f"not a clip message: {item!r}")
        return recorder.poll()
