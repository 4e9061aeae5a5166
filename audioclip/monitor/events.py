"""What the monitor's sinks receive: one record per event start and end."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone


def utc_iso(t: datetime | None) -> str | None:
    """ISO-8601 UTC with millisecond precision and a ``Z``, or ``None``."""
    if t is None:
        return None
    return t.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class DetectionEvent:
    """An event's start (``kind="start"``, no end yet) or end (``kind="end"``).

    ``id`` is the event's row id in the detections database, the same for its start and end.
    ``start_s`` / ``end_s`` are seconds of the source's stream (the start of the first window over the
    threshold; the end of the window that ended the event), ``*_utc`` the same moments in wall-clock time.
    ``peak`` is the highest (smoothed) probability so far, ``mean`` the mean over the event's windows.
    """

    id: int
    kind: str
    source: str
    label: str
    start_utc: datetime
    start_s: float
    peak: float
    mean: float
    end_utc: datetime | None = None
    end_s: float | None = None
    clip: str | None = None

    def to_json(self, clip_base: str | None = None) -> dict:
        """The JSON that sinks publish; with ``clip_base`` (the web server's URL, when it serves the clips) also
        ``clip_url``, where the event's clip plays once written (``{clip_base}/api/events/{id}/clip``)."""
        out = {
            "id": self.id,
            "event": self.kind,
            "source": self.source,
            "label": self.label,
            "start_utc": utc_iso(self.start_utc),
            "end_utc": utc_iso(self.end_utc),
            "start_s": round(self.start_s, 6),
            "end_s": None if self.end_s is None else round(self.end_s, 6),
            "peak": round(self.peak, 6),
            "mean": round(self.mean, 6),
            "clip": self.clip,
        }
        if clip_base is not None:
            out["clip_url"] = f"{clip_base}/api/events/{self.id}/clip"
        return out
