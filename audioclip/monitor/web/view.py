"""What the web API reads of a running monitor, as the JSON the pages take: sources, their states, events.

A source's ``state`` is one of:

- ``up``: it delivers audio and its last window was classified;
- ``gated``: it delivers audio but its last window was quieter than ``min_dbfs`` (not classified);
- ``reconnecting``: a live source that failed and is retrying, its outage shorter than its longest backoff
  wait (``retry_in_s``: seconds to the next attempt);
- ``down``: a live source that never came up since its first failed attempt, or whose outage outlasted its
  longest backoff wait, or a file that could not be read;
- ``ended``: a file read once, or stdin, reached its end.

``/healthz`` is healthy while every enabled source is ``up``, ``gated`` or ``reconnecting``.
"""

from __future__ import annotations

import math
from pathlib import Path

from ...stream.postprocess import WindowResult
from ..events import DetectionEvent, utc_iso
from ..supervisor import BACKING_OFF, CLOSED, UP, ResilientSource

HEALTHY = ("up", "gated", "reconnecting")


def finite(x: float | None) -> float | None:
    """``x`` rounded for JSON, or None where it is not a finite number (a silent window's -inf dB)."""
    return None if x is None or not math.isfinite(x) else round(float(x), 3)


def source_state(pipeline) -> tuple[str, float | None]:
    """``(state, retry_in_s)`` of a :class:`~audioclip.monitor.pipeline.SourcePipeline` (see the module)."""
    source = pipeline.source
    if isinstance(source, ResilientSource) and not pipeline.finished.is_set():
        if source.state == UP:
            return ("gated" if _gated(pipeline) else "up"), None
        if source.state == CLOSED:
            return "down", None
        down_for = source.down_for
        if not source.been_up and down_for is not None:
            return "down", source.retry_in
        if down_for is not None and down_for > source.backoff[1]:
            return "down", source.retry_in
        retry = source.retry_in if source.state == BACKING_OFF else 0.0
        return "reconnecting", None if retry is None else round(retry, 1)
    if pipeline.finished.is_set():
        return ("down" if pipeline.error is not None else "ended"), None
    return ("gated" if _gated(pipeline) else "up"), None


def _gated(pipeline) -> bool:
    min_dbfs = pipeline.config.min_dbfs
    return min_dbfs is not None and pipeline.windows > 0 and pipeline.level < min_dbfs


def window_json(source: str, result: WindowResult) -> dict:
    """A classified window as the live page takes it (without ``type``)."""
    return {"source": source, "t_start": round(result.t_start, 3), "t_end": round(result.t_end, 3),
            "top": result.top, "probs": {label: round(float(p), 4) for label, p in zip(result.labels, result.probs)},
            "level_db": finite(result.level_db)}


def event_json(row: dict) -> dict:
    """A stored event (a row of the ``events`` table) as the API shows it: links instead of file paths."""
    event_id = int(row["id"])
    has_clip = bool(row.get("clip"))
    return {"id": event_id, "source": row["source"], "label": row["label"], "start_utc": row["start_utc"],
            "end_utc": row["end_utc"], "start_s": row["start_s"], "end_s": row["end_s"], "peak": row["peak"],
            "mean": row["mean"], "review": row.get("review"),
            "clip_url": f"/api/events/{event_id}/clip" if has_clip else None,
            "spectrogram_url": f"/api/events/{event_id}/spectrogram.png" if has_clip else None}


def live_event_json(record: DetectionEvent) -> dict:
    """An event's start or end as it happens (its clip is written later: no links yet)."""
    return {"id": record.id, "event": record.kind, "source": record.source, "label": record.label,
            "start_utc": utc_iso(record.start_utc), "end_utc": utc_iso(record.end_utc),
            "start_s": round(record.start_s, 3), "end_s": None if record.end_s is None else round(record.end_s, 3),
            "peak": round(record.peak, 4), "mean": round(record.mean, 4), "review": None,
            "clip_url": None, "spectrogram_url": None}


def clip_path(row: dict | None, clips: str | None) -> Path | None:
    """The clip file of a stored event, when the database names one that is inside the clips folder.

    Paths come from the database only; one that points outside the configured clips folder (a database
    edited by hand, a moved folder) is not served.
    """
    if row is None or not row.get("clip") or clips is None:
        return None
    path = Path(row["clip"]).resolve()
    if not path.is_relative_to(Path(clips).resolve()) or not path.is_file():
        return None
    return path
