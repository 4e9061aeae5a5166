"""Per-window results, moving-average smoothing, and threshold events with hysteresis."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..model.labels import ParameterError


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
    events: list[Event] = field(default_factory=list)

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
    """An event's start or end. ``peak``: its highest prob so far; ``mean``: its mean prob over its
    windows, on end events only (None on starts)."""

    kind: str  # "start" or "end"
    label: str
    t: float
    peak: float
    mean: float | None = None

    def to_json(self) -> dict:
        out = {"event": self.kind, "label": self.label, "t": round(self.t, 6), "peak": round(self.peak, 6)}
        if self.mean is not None:
            out["mean"] = round(self.mean, 6)
        return out


class EventDetector:
    """Threshold events with hysteresis, per label.

    A label's event starts when its prob reaches its threshold (``>=``) in ``min_windows`` windows
    in a row; its start time is the end of the first of them. It ends at the first window whose prob
    falls below ``threshold - hysteresis``, which is not part of it. ``threshold``: one for every
    label or one per label. ``events``: per label, False for labels that are scored but never raise
    events (None: all raise them). :meth:`quiet` ends every open event (a window too quiet to
    classify: nothing is sounding).
    """

    def __init__(self, labels: Sequence[str], threshold: float | Sequence[float] = 0.5, hysteresis: float = 0.05, *,
                 min_windows: int = 1, events: Sequence[bool] | None = None):
        self.labels = list(labels)
        n = len(self.labels)
        thresholds = [threshold] * n if isinstance(threshold, (int, float)) else list(threshold)
        if len(thresholds) != n:
            raise ParameterError("threshold", f"{{threshold}}: one per label needed, got {len(thresholds)} for {n}")
        for label, value in zip(self.labels, thresholds):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ParameterError("threshold", f"{{threshold}}: must be between 0 and 1, got {value!r} ({label})")
        if isinstance(hysteresis, bool) or not isinstance(hysteresis, (int, float)) \
                or not 0.0 <= hysteresis < min(thresholds, default=1.0):
            raise ParameterError("hysteresis", f"{{hysteresis}}: must be at least 0 and below every {{threshold}} "
                                               f"({min(thresholds, default=1.0):g}), got {hysteresis!r}")
        if isinstance(min_windows, bool) or not isinstance(min_windows, int) or min_windows < 1:
            raise ParameterError("min_windows", f"{{min_windows}}: must be a whole number at least 1, "
                                                f"got {min_windows!r}")
        mask = [True] * n if events is None else [bool(e) for e in events]
        if len(mask) != n:
            raise ParameterError("events", f"{{events}}: one flag per label needed, got {len(mask)} for {n}")
        self.thresholds = dict(zip(self.labels, map(float, thresholds)))
        self.hysteresis, self.min_windows = float(hysteresis), min_windows
        self.watched = [label for label, on in zip(self.labels, mask) if on]
        self._streak: dict[str, list[tuple[float, float]]] = {label: [] for label in self.watched}
        self._open: dict[str, _Open] = {}
        self.counts = {label: 0 for label in self.labels}
        self.durations = {label: 0.0 for label in self.labels}
        self.peaks = {label: 0.0 for label in self.labels}

    def update(self, t: float, probs: np.ndarray) -> list[Event]:
        """The events that start or end at the window ending at ``t`` with (smoothed) ``probs``."""
        events = []
        by_label = dict(zip(self.labels, map(float, probs)))
        for label in self.watched:
            p, threshold = by_label[label], self.thresholds[label]
            event = self._open.get(label)
            if event is not None:
                if p < threshold - self.hysteresis:
                    events.append(self._end(label, t))
                else:
                    event.add(p)
            elif p >= threshold:
                streak = self._streak[label]
                streak.append((t, p))
                if len(streak) >= self.min_windows:
                    event = self._open[label] = _Open(start=streak[0][0])
                    for _, q in streak:
                        event.add(q)
                    streak.clear()
                    self.counts[label] += 1
                    events.append(Event("start", label, event.start, event.peak))
            else:
                self._streak[label].clear()
        return events

    def quiet(self, t: float) -> list[Event]:
        """End every open event and forget partial streaks: the window ending at ``t`` was silent."""
        for streak in self._streak.values():
            streak.clear()
        return self.close(t)

    def _end(self, label: str, t: float) -> Event:
        event = self._open.pop(label)
        self.durations[label] += t - event.start
        self.peaks[label] = max(self.peaks[label], event.peak)
        return Event("end", label, t, event.peak, event.total / event.windows)

    def open_state(self, label: str) -> tuple[float, float] | None:
        """``(peak, mean)`` of ``label``'s open event so far, or None when none is open."""
        event = self._open.get(label)
        return None if event is None else (event.peak, event.total / event.windows)

    def close(self, t: float, labels: Sequence[str] | None = None) -> list[Event]:
        """End the events still open when the stream stops (``labels``: only theirs)."""
        return [self._end(label, t) for label in list(self._open) if labels is None or label in labels]

    def hand_over(self, label: str, to: EventDetector) -> None:
        """Let ``to`` carry on ``label``'s open event (labels reloaded, this one as it was)."""
        if label in self._open and label in to.watched:
            to._open[label] = self._open.pop(label)


@dataclass
class _Open:
    """An open event: when it started, its peak, and the sum and count of its windows' probs."""

    start: float
    peak: float = 0.0
    total: float = 0.0
    windows: int = 0

    def add(self, p: float) -> None:
        self.peak, self.total, self.windows = max(self.peak, p), self.total + p, self.windows + 1
