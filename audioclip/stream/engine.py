"""The inference thread: newest-window-wins hand-off, level gating, classification, smoothing, events, counters."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from ..model.constants import SAMPLE_RATE
from .buffer import Window
from .postprocess import Event, EventDetector, Smoother, WindowResult

log = logging.getLogger(__name__)


class Classifier(Protocol):
    """What the stream needs of a backend: ``ZeroShotClassifier`` (torch) or ``OnnxClassifier``."""

    labels: Sequence[str]

    def scores(self, waveform):  # -> (probs [B, L], similarities [B, L]), array-like
        ...


def level_db(samples: np.ndarray) -> float:
    """RMS level in dB relative to full scale (-inf for silence)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else -np.inf


def window_result(window: Window, probs: np.ndarray, sims: np.ndarray, labels: Sequence[str], *,
                  smoother: Smoother, inference_s: float) -> WindowResult:
    """A classified window's result, the same for the stream and every monitor source: ``probs`` smoothed
    by ``smoother``, the window's times in stream seconds, its RMS level over the whole window (the
    level ``min_dbfs`` gates on) and its latency from the arrival of its last sample until now."""
    t_start = window.start / SAMPLE_RATE
    t_end = (window.start + len(window.samples)) / SAMPLE_RATE
    result = WindowResult(window.index, t_start, t_end, list(labels), smoother(probs), sims,
                          inference_ms=inference_s * 1e3, level_db=level_db(window.samples))
    result.latency_ms = (time.monotonic() - window.arrival) * 1e3
    return result


@dataclass
class StreamStats:
    """Counters of one stream. ``windows``: classified; ``gated``: too quiet to classify (``min_dbfs``);
    ``dropped``: skipped because a newer window was ready. ``rtf``: inference time per second of audio."""

    windows: int = 0
    gated: int = 0
    dropped: int = 0
    overflows: int = 0
    audio_seconds: float = 0.0
    busy_seconds: float = 0.0
    input_dbfs: float = -np.inf  # level of the latest block read (the live display's meter between windows)
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=100_000))

    @property
    def mean_latency_ms(self) -> float:
        return float(np.mean(self.latencies_ms)) if self.latencies_ms else float("nan")

    @property
    def p95_latency_ms(self) -> float:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else float("nan")

    @property
    def rtf(self) -> float:
        return self.busy_seconds / self.audio_seconds if self.audio_seconds > 0 else float("nan")


class InferenceWorker:
    """Classifies windows on its own thread and hands each result to ``emit``.

    :meth:`submit` holds at most one pending window: with ``wait=False`` a newer window replaces
    a pending one, which is counted in ``stats.dropped``; with ``wait=True`` it blocks until the
    thread has taken the previous one (files read as fast as the engine goes drop nothing).

    A window whose RMS level (over the whole window) is below ``min_dbfs`` is gated: not
    classified, not emitted, not smoothed, counted in ``stats.gated``. It ends the open events
    (nothing audible is sounding); those end events ride on the next emitted result, or come from
    :meth:`close_events`.
    """

    def __init__(self, classifier: Classifier, emit: Callable[[WindowResult], None], *, smooth: int = 1,
                 events: EventDetector | None = None, stats: StreamStats | None = None,
                 min_dbfs: float | None = None, score: Callable[[Window], tuple] | None = None):
        self.classifier = classifier
        self.score = score  # a window's (probs, similarities) instead of classifier.scores (stream/incremental.py)
        self.labels = list(classifier.labels)
        self.emit = emit
        self.smoother = Smoother(smooth)
        self.stats = stats or StreamStats()
        self.events = events
        self.min_dbfs = min_dbfs
        self._quiet_events: list[Event] = []
        self.error: BaseException | None = None
        self._pending: Window | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="audioclip-inference", daemon=True)
        self.last_t = 0.0

    def start(self) -> InferenceWorker:
        self._thread.start()
        return self

    def submit(self, window: Window, *, wait: bool) -> None:
        with self._cond:
            if wait:
                while self._pending is not None and not self._closed:
                    self._cond.wait()
            if self._pending is not None:
                self.stats.dropped += 1
            self._pending = window
            self._cond.notify_all()

    def drop(self) -> None:
        """Count a window that was never submitted (a newer one was ready at the same time)."""
        with self._cond:
            self.stats.dropped += 1

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while self._pending is None and not self._closed:
                        self._cond.wait()
                    if self._pending is None:
                        return
                    window, self._pending = self._pending, None
                    self._cond.notify_all()
                self._process(window)
        except BaseException as e:  # re-raised on the main thread by finish()
            self.error = e
            with self._cond:
                self._closed = True
                self._pending = None
                self._cond.notify_all()

    def _process(self, window: Window) -> None:
        t_end = (window.start + len(window.samples)) / SAMPLE_RATE
        if self.min_dbfs is not None and level_db(window.samples) < self.min_dbfs:
            self.stats.gated += 1
            if self.events is not None:
                self._quiet_events += self.events.quiet(t_end)
            self.last_t = t_end
            return
        t0 = time.perf_counter()
        if self.score is not None:
            probs, sims = self.score(window)
        else:
            probs, sims = self.classifier.scores(window.samples[None])
        probs, sims = np.asarray(probs, np.float64)[0], np.asarray(sims, np.float64)[0]
        busy = time.perf_counter() - t0
        if not (np.isfinite(probs).all() and np.isfinite(sims).all()):
            raise FloatingPointError(f"the classifier returned non-finite scores for window {window.index}")
        result = window_result(window, probs, sims, self.labels, smoother=self.smoother, inference_s=busy)
        if self.events is not None:
            result.events, self._quiet_events = self._quiet_events + self.events.update(t_end, result.probs), []
        self.last_t = t_end
        self.stats.windows += 1
        self.stats.busy_seconds += busy
        self.stats.latencies_ms.append(result.latency_ms)
        self.emit(result)

    def close_events(self) -> list[Event]:
        if self.events is None:
            return []
        ended, self._quiet_events = self._quiet_events + self.events.close(self.last_t), []
        return ended

    def finish(self, *, cancel: bool = False, timeout: float | None = None) -> None:
        """Stop after the pending window (``cancel``: without it); re-raise an error of the thread."""
        with self._cond:
            if cancel:
                self._pending = None
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
