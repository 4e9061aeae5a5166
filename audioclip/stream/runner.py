"""One stream from source to results: mixdown, resampling, window scheduling and the inference thread."""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Protocol

import numpy as np

from ..model.constants import FRAME_LENGTH, SAMPLE_RATE
from .buffer import WindowScheduler
from .engine import Classifier, InferenceWorker, StreamStats
from .postprocess import Event, EventDetector, WindowResult
from .resample import StreamResampler, to_mono

log = logging.getLogger(__name__)


class Source(Protocol):
    rate: float
    channels: int
    live: bool
    name: str
    overflows: int

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]: ...


def window_samples(window: float, hop: float) -> tuple[int, int]:
    """Window and hop in whole 44.1 kHz samples, with a ``ValueError`` for unusable values."""
    win, hop_n = int(round(window * SAMPLE_RATE)), int(round(hop * SAMPLE_RATE))
    if not win >= FRAME_LENGTH:
        raise ValueError(f"window must be at least {FRAME_LENGTH / SAMPLE_RATE:.3f} s (one FBSP frame), got {window}")
    if not hop_n >= 1:
        raise ValueError(f"hop must be positive, got {hop}")
    return win, hop_n


def run_stream(*, source: Source, classifier: Classifier, on_result: Callable[[WindowResult], None],
               window: float = 5.0, hop: float = 0.5, smooth: int = 1, events: EventDetector | None = None,
               duration: float | None = None, stats: StreamStats | None = None) -> tuple[StreamStats, list[Event]]:
    """Stream ``source`` through ``classifier`` until the input ends, ``duration`` seconds of audio
    have been read, or KeyboardInterrupt; return the counters and the events closed at the end.

    ``on_result`` is called on the inference thread, once per classified window, in order. Live
    sources drop stale windows (newest wins); other sources wait for the engine. ``stats`` (new
    when not given) is updated as the stream runs.
    """
    win, hop_n = window_samples(window, hop)
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be positive, got {duration}")
    limit = None if duration is None else int(round(duration * SAMPLE_RATE))
    scheduler = WindowScheduler(win, hop_n)
    resampler = StreamResampler(source.rate)
    stats = StreamStats() if stats is None else stats
    worker = InferenceWorker(classifier, on_result, smooth=smooth, events=events, stats=stats).start()
    live = source.live
    log.info("streaming %s: window %.3f s, hop %.3f s, %s", source.name, win / SAMPLE_RATE, hop_n / SAMPLE_RATE,
             "newest window wins" if live else "every window")

    def feed(samples: np.ndarray, arrival: float) -> None:
        for i in range(0, len(samples), hop_n):  # the scheduler takes at most a hop at a time
            ready = scheduler.push(samples[i:i + hop_n], arrival)
            if not ready:
                continue
            for index in ready[:-1]:
                if live:
                    scheduler.skip(index)
                    worker.drop()
                else:
                    worker.submit(scheduler.take(index), wait=True)
            worker.submit(scheduler.take(ready[-1]), wait=not live)
            if worker.error is not None:
                break

    cancelled = False
    blocks = source.blocks()
    try:
        arrival = 0.0
        for block, arrival in blocks:
            samples = resampler.process(to_mono(block))
            if limit is not None:
                samples = samples[:max(limit - scheduler.total, 0)]
            feed(samples, arrival)
            stats.audio_seconds, stats.overflows = scheduler.total / SAMPLE_RATE, source.overflows
            if worker.error is not None or (limit is not None and scheduler.total >= limit):
                break
        else:
            tail = resampler.flush()
            if limit is not None:
                tail = tail[:max(limit - scheduler.total, 0)]
            feed(tail, arrival)
        padded = scheduler.finish()
        if padded is not None:
            log.info("input shorter than one window (%.3f s): one window, zero-padded", scheduler.total / SAMPLE_RATE)
            worker.submit(padded, wait=True)
        if scheduler.total == 0:
            log.warning("the input held no audio")
    except KeyboardInterrupt:
        cancelled = True
        log.info("interrupted; stopping")
    finally:
        blocks.close()  # stops a microphone, closes a file
        stats.audio_seconds = scheduler.total / SAMPLE_RATE
        stats.overflows = source.overflows
        worker.finish(cancel=cancelled or worker.error is not None)
    return stats, worker.close_events()
