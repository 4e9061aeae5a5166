"""One source inside the monitor: its reading thread (mixdown, resampling, windows, gating, clip
audio) and what becomes of its classified windows (smoothing, events, privacy, sinks).

A :class:`SourcePipeline` reads its source on a thread of its own and hands windows to the shared
:class:`~audioclip.monitor.scheduler.InferenceScheduler`; the scheduler calls :meth:`on_result`
on the inference thread. Stream time (``start_s`` / ``end_s``) counts seconds of this source from
its start and keeps counting through outages (the seconds lost are added), so clips and events of
a source never overlap across a gap; after a gap the resampler and the windows start afresh.

An event starts at the start of the first window whose score crossed its label's threshold (its
clip adds ``pre_roll`` before that) and ends at the end of the first window below ``threshold -
hysteresis``, at a quiet (gated) window, or, when the source goes down or ends, at the end of its
last window classified before that: then its clip is written at once, with the audio up to there.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Callable, Collection

import numpy as np

from ..audio import SAMPLE_RATE
from ..stream.buffer import Window
from ..stream.config import StreamConfig
from ..stream.engine import level_db, window_result
from ..stream.feed import WindowFeed
from ..stream.postprocess import Event, EventDetector, Smoother, WindowResult
from .config import LabelParams
from .events import DetectionEvent
from .messages import EventEmbedding, EventSeen, MomentEmbedding, PipelineMessage, WindowClassified
from .supervisor import Block, SourceDown, StreamGap

log = logging.getLogger(__name__)

TOUCH_SECONDS = 1.0
"""How often an open event's last-seen time reaches the database (what a crash leaves)."""

MOMENT_SLACK = 1e-9
"""Seconds a window's start may fall short of a multiple of ``embed_every`` and still reach it (float rounding)."""


def utc_at(monotonic: float) -> datetime:
    """The wall-clock UTC time of a ``time.monotonic()`` reading."""
    return datetime.now(timezone.utc) - timedelta(seconds=time.monotonic() - monotonic)


class IdCounter:
    """Event ids for every source, continuing the database's (``start``: its next id)."""

    def __init__(self, start: int = 1):
        self._next = itertools.count(start)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return next(self._next)


def detectors_for(labels: list[str], params: LabelParams) -> list[EventDetector]:
    """One detector per distinct (hysteresis, min_windows), each watching the event labels that use them."""
    groups: dict[tuple[float, int], list[bool]] = {}
    for i, key in enumerate(zip(params.hysteresis.tolist(), params.min_windows.tolist())):
        mask = groups.setdefault(key, [False] * len(labels))
        mask[i] = bool(params.event[i])
    return [EventDetector(labels, params.thresholds.tolist(), hysteresis, min_windows=int(min_windows), events=mask)
            for (hysteresis, min_windows), mask in groups.items() if any(mask)]


class Mark(Enum):
    """What happened at a stream sample, kept in stream order until the windows before it are classified: a
    window in flight, a gated (quiet) window, the source down, or its end."""

    WINDOW = "window"
    QUIET = "quiet"
    DOWN = "down"
    ENDED = "ended"


class _Peak:
    """An open event's highest (smoothed) probability, and the embedding of the window that had it."""

    def __init__(self, p: float, embedding: tuple | None):
        self.p, self.embedding = p, embedding
        self.changed = True  # not yet handed to the database


class SourcePipeline:
    """A source's thread and the handling of its results. ``emit(message)`` receives a
    :data:`~audioclip.monitor.messages.PipelineMessage` for the outputs and sinks: a
    :class:`WindowClassified` per window, a :class:`DetectionEvent` per event start and end, an
    :class:`EventSeen` about once a second per open event and, when windows come with embeddings, an
    :class:`EventEmbedding` of an event's peak window;
    ``clips`` (a :class:`~audioclip.monitor.clip_sink.ClipSink` or None) receives the audio, privacy mutes
    and clip requests; it only queues them (the clips are written on its own thread). With ``embed_every``
    seconds (0: never) and windows that come with embeddings, a :class:`MomentEmbedding` of the window whose
    start first reaches each multiple of ``embed_every`` on the stream's clock."""

    def __init__(self, name: str, source, *, config: StreamConfig, labels: list[str], params: LabelParams,
                 scheduler, emit: Callable[[PipelineMessage], None], next_id: IdCounter, clips=None,
                 metrics=None, shortest: int | None = None, embed_every: float = 0.0):
        self.name, self.source, self.config = name, source, config
        self.embed_every = embed_every
        self._next_moment = 0.0  # the stream second the next moment's window must start at or after
        self.shortest = shortest  # a source shorter than one window is padded only this far (None: to the window)
        self.scheduler, self.emit, self.next_id = scheduler, emit, next_id
        self.clips = clips
        self.metrics = metrics
        # Set while someone watches this source's audio (the web page's spectrogram): ``tap(mono, end_s)`` gets each
        # block's resampled samples and the stream second after them, on the reading thread; it must only copy.
        self.tap: Callable[[np.ndarray, float], None] | None = None
        self.live = bool(getattr(source, "live", True))
        self.windows = self.gated = self.events = 0
        self.level = -np.inf
        self.last: WindowResult | None = None
        self.error: BaseException | None = None
        self.finished = threading.Event()
        self._lock = threading.Lock()  # the detectors and open events: the inference and source threads
        self._t = 0.0  # stream seconds of the newest window handled
        self._arrival: float | None = None  # when the newest classified window's last sample arrived
        # Windows in flight, and behind them what happened after them (a gated window, the source down or
        # ended), by stream sample: handled in stream order, once the windows before them are classified.
        self._order: deque[tuple[Mark, int]] = deque()
        # The labels' state, made by set_labels (None before its first call)
        self.labels: list[str] = []
        self.detectors: list[EventDetector] | None = None
        self.smoother: Smoother | None = None
        self._open: dict[str, tuple[int, datetime, float]] = {}  # label -> (id, start_utc, start_s)
        self._touched: dict[str, float] = {}
        self._peaks: dict[str, _Peak] = {}  # open label -> its peak window's embedding
        self.set_labels(labels, params)
        self._thread = threading.Thread(target=self._read, name=f"pipeline {name}", daemon=True)

    # -- labels (start and reload) -------------------------------------------------------------
    def set_labels(self, labels: list[str], params: LabelParams, keep: Collection[str] = ()) -> None:
        """New labels and thresholds. The open events of the labels in ``keep`` (ones the reload left as they
        were) go on, with their ids; the others end now. Streaks start afresh; so does smoothing, unless every
        label was kept in the same order."""
        with self._lock:
            old = self.detectors
            kept = {label: event for label, event in self._open.items() if label in keep and label in labels}
            if old is not None:
                ending = [label for label in self._open if label not in kept]
                self._emit_events([e for d in old for e in d.close(self._t, ending)], self._t)
            smoother = self.smoother
            if old is None or list(labels) != self.labels or not set(labels) <= set(keep):
                smoother = Smoother(self.config.smooth)
            self.labels, self.params, self.smoother = list(labels), params, smoother
            self.detectors = detectors_for(self.labels, params)
            for label in kept:
                source = next(d for d in old if label in d.watched)
                source.hand_over(label, next(d for d in self.detectors if label in d.watched))
            self._open = kept
            self._touched = {label: t for label, t in self._touched.items() if label in kept}
            self._index = {label: i for i, label in enumerate(self.labels)}
            # The newest windows' (start second, smoothed probs, (embedding, seconds) or None): an event's first.
            self._recent: deque[tuple[float, np.ndarray, tuple | None]] = deque(
                maxlen=int(params.min_windows.max(initial=1)))
            self._peaks = {label: peak for label, peak in self._peaks.items() if label in kept}

    # -- the reading thread ---------------------------------------------------------------------
    def start(self) -> SourcePipeline:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _read(self) -> None:
        cfg = self.config
        base = 0  # samples of stream time before the current run of continuous audio
        feed: WindowFeed | None = None
        limit = None if cfg.duration is None else int(round(cfg.duration * SAMPLE_RATE))
        try:
            for item in self._items():
                if isinstance(item, SourceDown):
                    self._mark(Mark.DOWN, base + (feed.total if feed is not None else 0))
                    continue
                if isinstance(item, StreamGap):
                    if feed is not None:
                        base += feed.total + int(round(item.seconds * SAMPLE_RATE))
                    feed = None
                    continue
                samples, arrival, rate = item
                if feed is None or rate != feed.rate:
                    if feed is not None:  # a rate change without a gap marker: start afresh too
                        base += feed.total
                    feed = self._feed(rate, base, None if limit is None else limit - base)
                feed.push(samples, arrival)
                if feed.full:
                    break
            if feed is not None:
                feed.end(self.shortest)
        except Exception as e:  # a source that cannot be read at all (a file source fails for good)
            self.error = e
            log.error("source %s stopped: %s", self.name, e)
        finally:
            self._mark(Mark.ENDED, base + (feed.total if feed is not None else 0))
            self.finished.set()

    def _feed(self, rate: float, base: int, limit: int | None) -> WindowFeed:
        """A feed for a run of continuous audio that starts at stream sample ``base``."""

        def audio(mono: np.ndarray, end: int) -> None:
            if self.clips is not None:
                self.clips.push(self.name, mono, (base + end) / SAMPLE_RATE)
            tap = self.tap
            if tap is not None:
                tap(mono, (base + end) / SAMPLE_RATE)

        def skip() -> None:
            self.scheduler.drop(self.name)
            if self.metrics is not None:
                self.metrics.dropped_windows(self.name)

        return WindowFeed(rate, self.config, live=self.live, offer=lambda window: self._offer(window, base),
                          skip=skip, on_audio=audio, limit=limit)

    def _items(self):
        """Blocks as ``(samples, arrival, rate)``, :class:`StreamGap` and :class:`SourceDown` markers, from any
        source."""
        for item in self.source.blocks():
            if isinstance(item, (StreamGap, SourceDown)):
                yield item
            elif isinstance(item, Block):
                yield item.samples, item.arrival, item.rate
            else:  # a plain source (a file read once, stdin): one rate for ever
                yield item[0], item[1], self.source.rate

    def _offer(self, window: Window, base: int) -> None:
        window = replace(window, start=window.start + base)
        end = window.start + len(window.samples)
        self.windows += 1
        level = level_db(window.samples)
        self.level = level
        if self.config.min_dbfs is not None and level < self.config.min_dbfs:
            self.gated += 1
            if self.metrics is not None:
                self.metrics.window(self.name, level_dbfs=max(level, -200.0), inference_s=None)
            self._mark(Mark.QUIET, end)
            return
        with self._lock:
            self._order.append((Mark.WINDOW, end))
        replaced = self.scheduler.submit(self.name, window, wait=not self.live)
        if replaced and self.metrics is not None:
            self.metrics.dropped_windows(self.name)

    def _mark(self, kind: Mark, at: int) -> None:
        """Stream sample ``at`` was gated (``quiet``) or the source went ``down`` or ``ended`` there: handle it
        now, or after the windows still being classified."""
        with self._lock:
            if any(k is Mark.WINDOW for k, _ in self._order):
                self._order.append((kind, at))
            else:
                self._handle(kind, at)

    def _handle(self, kind: Mark, at: int) -> None:
        if kind is Mark.QUIET:
            t = at / SAMPLE_RATE
            if self.clips is not None:
                self.clips.classified(self.name, t)
            self._emit_events(self._quiet(t), t)
        else:
            self._cut(at, "the source went down" if kind is Mark.DOWN else "the stream ended")

    def _cut(self, at: int, why: str) -> None:
        """The source went down or ended at stream sample ``at``: its open events end at its last classified
        window, its pending clips are written now with the audio up to ``at``, and what comes next (after a
        reconnect) starts afresh: no streak, smoothing or event carries over."""
        self._emit_events(self._quiet(self._t), self._t, arrival=self._arrival)
        self.smoother = Smoother(self.config.smooth)
        self._recent.clear()
        if self.clips is not None:
            self.clips.cut(self.name, at / SAMPLE_RATE, why)

    def _catch_up(self, end: int | None) -> None:
        """Handle, in stream order, the gated windows before sample ``end`` (None: all that lead the
        queue) and forget windows that were replaced before their turn."""
        while self._order:
            kind, at = self._order[0]
            if end is None and kind is Mark.WINDOW:
                return
            if end is not None and at >= end:
                if kind is Mark.WINDOW and at == end:
                    self._order.popleft()
                return
            self._order.popleft()
            if kind is not Mark.WINDOW:
                self._handle(kind, at)

    # -- results (the inference thread) ---------------------------------------------------------
    def on_result(self, window: Window, probs: np.ndarray, sims: np.ndarray, seconds: float, *,
                  embedding: np.ndarray | None = None) -> None:
        """A classified window; ``embedding``: its normalised audio embedding, kept for the events it peaks in."""
        t_start = window.start / SAMPLE_RATE
        t_end = (window.start + len(window.samples)) / SAMPLE_RATE
        with self._lock:
            self._catch_up(window.start + len(window.samples))
            if len(probs) != len(self.labels):  # a window classified just before a reload
                return
            result = window_result(window, probs, sims, self.labels, smoother=self.smoother, inference_s=seconds)
            probs = result.probs
            events = [e for detector in self.detectors for e in detector.update(t_end, probs)]
            seconds_long = len(window.samples) / SAMPLE_RATE
            self._follow_peaks(events, t_start, probs, None if embedding is None else (embedding, seconds_long))
            if embedding is not None and self.embed_every > 0 and t_start >= self._next_moment - MOMENT_SLACK:
                self._next_moment = float(np.floor(t_start / self.embed_every + MOMENT_SLACK) + 1) * self.embed_every
                self.emit(MomentEmbedding(self.name, utc_at(window.arrival) - timedelta(seconds=seconds_long),
                                          t_start, t_end, embedding))
            self._t, self._arrival = t_end, window.arrival
            self.last = result
            if self.metrics is not None:
                self.metrics.window(self.name, level_dbfs=max(result.level_db, -200.0), inference_s=seconds)
            if self.clips is not None:
                if self.params.privacy[int(np.argmax(probs))]:
                    self.clips.mute(self.name, t_start, t_end)
                self.clips.classified(self.name, t_end)
            self.emit(WindowClassified(self.name, result))
            self._emit_events(events, t_end, arrival=window.arrival)
            self._touch(t_end, window.arrival)
            self._catch_up(None)

    def _emit_events(self, events: list[Event], t: float, arrival: float | None = None) -> None:
        now_utc = utc_at(arrival) if arrival is not None else datetime.now(timezone.utc)
        for e in events:
            if e.kind == "start":
                event_id = self.next_id()
                start_s = self._first_windows(e.label)[0][0]  # the start of the first window over the threshold
                start_utc = now_utc - timedelta(seconds=max(t - start_s, 0.0))
                self._open[e.label] = (event_id, start_utc, start_s)
                record = DetectionEvent(event_id, "start", self.name, e.label, start_utc, start_s, e.peak, e.peak)
                peak = self._peaks[e.label] = self._first_peak(e.label)
                self.events += 1
                if self.metrics is not None:
                    self.metrics.event(self.name, e.label)
                if self.clips is not None:
                    self.clips.request(event_id, self.name, start_s, None, start_utc, label=e.label)
            else:
                event_id, start_utc, start_s = self._open.pop(e.label)
                self._touched.pop(e.label, None)
                record = DetectionEvent(event_id, "end", self.name, e.label, start_utc, start_s, e.peak,
                                        e.peak if e.mean is None else e.mean, end_utc=now_utc, end_s=e.t)
                peak = self._peaks.pop(e.label, None)
                if self.clips is not None:
                    self.clips.request(event_id, self.name, start_s, e.t, start_utc, label=e.label)
            self.emit(record)
            if peak is not None and peak.changed and peak.embedding is not None:
                vector, window_seconds = peak.embedding
                self.emit(EventEmbedding(event_id, window_seconds, vector))
                peak.changed = False

    # -- each event's peak window ------------------------------------------------------------------
    def _follow_peaks(self, events: list[Event], t_start: float, probs: np.ndarray, embedding: tuple | None) -> None:
        """Remember this window; an open event that goes on through it takes it as its peak window when its
        label's probability beats the peak so far (the first window of the highest, as the detector's peak)."""
        self._recent.append((t_start, probs, embedding))
        ending = {e.label for e in events if e.kind == "end"}
        for label, peak in self._peaks.items():
            p = float(probs[self._index[label]])
            if label not in ending and p > peak.p:
                peak.p, peak.embedding, peak.changed = p, embedding, True

    def _first_windows(self, label: str) -> list[tuple[float, np.ndarray, tuple | None]]:
        """The windows that started ``label``'s event, oldest first: the ``min_windows`` newest (the detector's
        streak is of windows in a row, and every classified window is remembered)."""
        return list(self._recent)[-int(self.params.min_windows[self._index[label]]):]

    def _first_peak(self, label: str) -> _Peak:
        """The peak among the windows that started ``label``'s event."""
        i = self._index[label]
        _, p, embedding = max(self._first_windows(label), key=lambda item: float(item[1][i]))  # the first of equals
        return _Peak(float(p[i]), embedding)

    def _touch(self, t: float, arrival: float) -> None:
        """Open events' last-seen time to the database, at most once a second each."""
        for label, (event_id, _, _) in self._open.items():
            if t - self._touched.get(label, -np.inf) < TOUCH_SECONDS:
                continue
            self._touched[label] = t
            for detector in self.detectors:
                state = detector.open_state(label)
                if state is not None:
                    self.emit(EventSeen(event_id, utc_at(arrival), t, state[0], state[1]))

    def _quiet(self, t: float) -> list[Event]:
        return [e for detector in self.detectors for e in detector.quiet(t)]

    def _close_all(self, t: float) -> list[Event]:
        return [e for detector in self.detectors for e in detector.close(t)]

    def close_events(self) -> None:
        """End the open events at the stream's current time (shutdown)."""
        with self._lock:
            self._catch_up(None)
            self._order.clear()
            self._emit_events(self._close_all(self._t), self._t)
