"""Per-window results, moving-average smoothing, and threshold events with hysteresis."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class WindowResult:
    """One classified window. ``probs`` are the reported (smoothed) probabilities."""

    index: int
    t_start: float
    t_end: float
    labels: list[str]
    probs: np.ndarray
    similarity: np.ndarray
    latency_ms: float = 0.0
    inference_ms: float = 0.0
    level_db: float = -np.inf
    events: list["Event"] = field(default_factory=list)

    @property
    def top(self) -> str:
        return self.labels[int(np.argmax(self.probs))]

    def to_json(self) -> dict:
        """Exactly the keys of the JSONL format."""
        return {
            "t_start": round(self.t_start, 6),
            "t_end": round(self.t_end, 6),
            "top": self.top,
            "probs": {label: round(float(p), 6) for label, p in zip(self.labels, self.probs)},
            "similarity": {label: round(float(s), 6) for label, s in zip(self.labels, self.similarity)},
            "latency_ms": round(self.latency_ms, 1),
        }


class Smoother:
    """Moving average of probabilities over the last ``n`` windows (``n = 1``: unchanged)."""

    def __init__(self, n: int = 1):
        if n < 1:
            raise ValueError(f"smoothing needs at least one window, got {n}")
        self._recent: deque[np.ndarray] = deque(maxlen=n)

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        self._recent.append(np.asarray(probs, np.float64))
        return np.mean(self._recent, axis=0) if len(self._recent) > 1 else self._recent[0]


@dataclass
class Event:
    kind: str  # "start" or "end"
    label: str
    t: float
    peak: float

    def to_json(self) -> dict:
        return {"event": self.kind, "label": self.label, "t": round(self.t, 6), "peak": round(self.peak, 6)}


class EventDetector:
    """A label's event starts when its prob rises above ``threshold`` and ends when it falls below
    ``threshold - hysteresis``. ``peak``: the prob at the start, the event's maximum at the end."""

    def __init__(self, labels: list[str], threshold: float, hysteresis: float = 0.05):
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        if not 0.0 <= hysteresis < threshold:
            raise ValueError(f"hysteresis must be at least 0 and below the threshold {threshold}, got {hysteresis}")
        self.labels, self.threshold, self.hysteresis = list(labels), threshold, hysteresis
        self._start: dict[str, float] = {}
        self._peak: dict[str, float] = {}
        self.counts = {label: 0 for label in self.labels}
        self.durations = {label: 0.0 for label in self.labels}
        self.peaks = {label: 0.0 for label in self.labels}

    def update(self, t: float, probs: np.ndarray) -> list[Event]:
        events = []
        for label, p in zip(self.labels, map(float, probs)):
            if label in self._start:
                self._peak[label] = max(self._peak[label], p)
                if p < self.threshold - self.hysteresis:
                    events.append(self._end(label, t))
            elif p > self.threshold:
                self._start[label], self._peak[label] = t, p
                self.counts[label] += 1
                events.append(Event("start", label, t, p))
        return events

    def _end(self, label: str, t: float) -> Event:
        start, peak = self._start.pop(label), self._peak.pop(label)
        self.durations[label] += t - start
        self.peaks[label] = max(self.peaks[label], peak)
        return Event("end", label, t, peak)

    def close(self, t: float) -> list[Event]:
        """End the events still open when the stream stops."""
        return [self._end(label, t) for label in list(self._start)]

    @property
    def active(self) -> list[str]:
        return list(self._start)
