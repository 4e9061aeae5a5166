"""``/api/events``: the stored events, filtered and paginated (JSON or CSV), a review per event, and each
event's clip (with HTTP ranges, for seeking) and spectrogram (made on demand from the clip, then cached).

Files are found through the database only: an event id is an integer, and the clip is the path its row
holds, served only when it lies inside the configured clips folder.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response

from .app import store_of, web
from .view import clip_path, event_json

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/events", tags=["events"])

CSV_COLUMNS = ("id", "source", "label", "start_utc", "end_utc", "start_s", "end_s", "peak", "mean", "review",
               "clip_url")
SPECTROGRAM_CACHE_FILES = 5000
"""Cached event spectrograms kept; the oldest beyond are deleted when a new one is made."""


@router.get("", summary="Stored events, newest first; format=csv for a CSV of the same rows")
def events(request: Request, source: str | None = None, label: str | None = None,
           since: str | None = Query(None, description="ISO 8601 time, e.g. 2026-12-01T12:00:00Z"),
           until: str | None = Query(None, description="ISO 8601 time (exclusive)"),
           review: Literal["correct", "wrong", "unreviewed"] | None = None,
           limit: int = Query(50, ge=1, le=10_000), offset: int = Query(0, ge=0),
           format: Literal["json", "csv"] = "json"):
    store = store_of(request)
    try:
        rows, total = store.query_events(source=source, label=label, since=since, until=until, review=review,
                                         limit=limit, offset=offset)
    except ValueError as e:  # a time that is not ISO 8601
        raise HTTPException(422, str(e)) from None
    shown = [event_json(row) for row in rows]
    if format == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(shown)
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="events.csv"',
                                 "X-Total-Count": str(total)})
    return {"total": total, "events": shown}


def _row(request: Request, event_id: int) -> dict:
    row = store_of(request).event(event_id)
    if row is None:
        raise HTTPException(404, f"no event {event_id}")
    return row


@router.get("/{event_id}", summary="One event")
def event(event_id: int, request: Request) -> dict:
    return event_json(_row(request, event_id))


@router.patch("/{event_id}", summary="Mark an event correct or wrong (null: not reviewed)")
def review(event_id: int, request: Request,
           review: Annotated[Literal["correct", "wrong"] | None, Body(embed=True)]) -> dict:
    store = store_of(request)
    if not store.set_review(event_id, review):
        raise HTTPException(404, f"no event {event_id}")
    return event_json(_row(request, event_id))


def _clip(request: Request, event_id: int) -> Path:
    row = _row(request, event_id)
    store_config = web(request).monitor.config.store
    path = clip_path(row, None if store_config is None else store_config.clips)
    if path is None:
        raise HTTPException(404, f"event {event_id} has no clip" + (f" ({row['clip_note']})"
                                                                    if row.get("clip_note") else ""))
    return path


@router.get("/{event_id}/clip", summary="The event's audio (FLAC; HTTP ranges for seeking)",
            response_class=FileResponse)
def clip(event_id: int, request: Request) -> FileResponse:
    return FileResponse(_clip(request, event_id), media_type="audio/flac",
                        filename=f"event-{event_id}.flac", content_disposition_type="inline")


@router.get("/{event_id}/spectrogram.png", summary="The dB front end of the event's clip", response_class=FileResponse)
def spectrogram(event_id: int, request: Request) -> FileResponse:
    from .spectrogram import FrontEnd, clip_spectrogram

    path = _clip(request, event_id)
    state = web(request)
    cache = spectrogram_cache(state.monitor.config.store.clips)
    try:
        front = FrontEnd(state.monitor.classifier)
    except ValueError as e:
        raise HTTPException(404, f"no spectrogram: {e}") from None
    made = not (cache / f"{event_id}.png").is_file()
    png = clip_spectrogram(front, path, cache / f"{event_id}.png")
    if made:
        _prune(cache)
    return FileResponse(png, media_type="image/png")


def spectrogram_cache(clips: str) -> Path:
    """Where event spectrograms are cached: a folder beside the clips folder (retention never counts it)."""
    clips = Path(clips)
    return clips.parent / f"{clips.name}.spectrograms"


def _prune(cache: Path) -> None:
    files = sorted(cache.glob("*.png"), key=lambda p: p.stat().st_mtime)
    for old in files[:max(0, len(files) - SPECTROGRAM_CACHE_FILES)]:
        old.unlink(missing_ok=True)
