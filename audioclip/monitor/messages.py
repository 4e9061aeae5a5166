"""What passes between the monitor's pipelines, its service and its sinks: small frozen dataclasses,
one per kind of news, never a kind string with a loose payload.

A pipeline hands the service a :data:`PipelineMessage`: a classified window
(:class:`WindowClassified`), an event's start or end (:class:`~audioclip.monitor.events.DetectionEvent`),
an open event still on (:class:`EventSeen`), the embedding of an event's peak window
(:class:`EventEmbedding`), or a window's embedding kept every ``embed_every`` seconds
(:class:`MomentEmbedding`). The database sink takes a :data:`StoreMessage`: those events, seen times
and embeddings, and the clips' news (:class:`ClipWritten`, :class:`ClipsCleared`). MQTT and the
webhooks take only :class:`~audioclip.monitor.events.DetectionEvent`. Anything else is a programming
error: the receiver raises ``TypeError``, and nothing unknown is ever stored or published.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np

from ..stream.postprocess import WindowResult
from .events import DetectionEvent


@dataclass(frozen=True)
class WindowClassified:
    """Source ``source`` classified a window: ``result`` (smoothed probabilities, times, level, latency)."""

    source: str
    result: WindowResult


@dataclass(frozen=True)
class EventSeen:
    """Open event ``event_id`` was still on at ``utc`` / stream second ``s``, with its ``peak`` and ``mean``
    so far (what a crash leaves in the database)."""

    event_id: int
    utc: datetime
    s: float
    peak: float
    mean: float


@dataclass(frozen=True)
class EventEmbedding:
    """The normalised audio embedding ``vector`` of event ``event_id``'s peak window, ``window`` seconds long."""

    event_id: int
    window: float
    vector: np.ndarray


@dataclass(frozen=True)
class MomentEmbedding:
    """Source ``source``'s window ``[t_start, t_end)`` (stream seconds), which started at ``utc``, and its
    normalised audio embedding ``vector``: one every ``[store] embed_every`` seconds (the ``moments`` table)."""

    source: str
    utc: datetime
    t_start: float
    t_end: float
    vector: np.ndarray


@dataclass(frozen=True)
class ClipWritten:
    """Event ``event_id``'s clip is at ``path`` (None: not written), with ``note`` (the ``clip_note`` column);
    ``[start_s, end_s)``: the stream seconds it holds (None: not known, or unchanged)."""

    event_id: int
    path: str | None
    note: str | None
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class ClipsCleared:
    """Retention deleted the clips of ``event_ids``: their rows keep no path."""

    event_ids: tuple[int, ...]


PipelineMessage = WindowClassified | DetectionEvent | EventSeen | EventEmbedding | MomentEmbedding
StoreMessage = DetectionEvent | EventSeen | EventEmbedding | MomentEmbedding | ClipWritten | ClipsCleared

PIPELINE_MESSAGES = (WindowClassified, DetectionEvent, EventSeen, EventEmbedding, MomentEmbedding)
STORE_MESSAGES = (DetectionEvent, EventSeen, EventEmbedding, MomentEmbedding, ClipWritten, ClipsCleared)


def check_message(message, kinds: tuple[type, ...], receiver: str) -> None:
    """``TypeError`` unless ``message`` is one of ``kinds``: an unknown payload is a bug, never passed on."""
    if not isinstance(message, kinds):
        raise TypeError(f"{receiver}: expected {', '.join(k.__name__ for k in kinds)}; got {message!r}")
