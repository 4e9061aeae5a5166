"""One stream from source to results: mixdown, resampling, window scheduling and the inference thread."""

from __future__ import annotations

import logging
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from ..model.constants import SAMPLE_RATE
from ..model.labels import ParameterError
from .backends import shortest_window
from .config import StreamConfig
from .engine import Classifier, InferenceWorker, StreamStats, level_db
from .feed import WindowFeed
from .incremental import window_scorer
from .postprocess import Event, EventDetector, WindowResult

log = logging.getLogger(__name__)


class Source(Protocol):
    rate: float
    channels: int
    live: bool
    name: str
    overflows: int

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]: ...


def check_window(classifier: Classifier, config: StreamConfig) -> None:
    """``ParameterError`` when ``classifier`` (an ONNX export of one window length) cannot take ``config.window``."""
    fixed = getattr(classifier, "window_samples", None)
    if fixed is not None and fixed != config.window_samples:
        seconds = f"{fixed / SAMPLE_RATE:g}"
        raise ParameterError("window", f"{{window}}: this export takes windows of exactly {seconds} s: pass "
                                       f"{{window}} {seconds}, or export with a dynamic length")


def event_detector(config: StreamConfig, labels: Sequence[str]) -> EventDetector | None:
    """The detector ``config`` asks for over ``labels`` (one threshold for all), or None without events."""
    if not config.events:
        return None
    return EventDetector(labels, config.threshold, config.hysteresis, min_windows=config.min_windows)


def run_stream(*, source: Source, classifier: Classifier, on_result: Callable[[WindowResult], None],
               config: StreamConfig | None = None, events: EventDetector | None = None,
               stats: StreamStats | None = None) -> tuple[StreamStats, list[Event]]:
    """Stream ``source`` through ``classifier`` until the input ends, ``config.duration`` seconds of
    audio have been read, or KeyboardInterrupt; return the counters and the events closed at the end.

    ``on_result`` is called on the inference thread, once per classified window, in order. Live
    sources drop stale windows (newest wins); other sources wait for the engine. ``events``: a
    detector of one's own (per-label thresholds); without one, ``config.events`` builds
    :func:`event_detector`. ``stats`` (new when not given) is updated as the stream runs.
    """
    config = StreamConfig() if config is None else config
    check_window(classifier, config)
    win, hop_n = config.window_samples, config.hop_samples
    limit = None if config.duration is None else int(round(config.duration * SAMPLE_RATE))
    if events is None:
        events = event_detector(config, classifier.labels)
    stats = StreamStats() if stats is None else stats
    worker = InferenceWorker(classifier, on_result, smooth=config.smooth, events=events, stats=stats,
                             min_dbfs=config.min_dbfs, score=window_scorer(classifier, config)).start()
    live = source.live
    feed = WindowFeed(source.rate, config, live=live, offer=lambda window: worker.submit(window, wait=not live),
                      skip=worker.drop, limit=limit)
    log.info("streaming %s: window %.3f s, hop %.3f s, %s", source.name, win / SAMPLE_RATE, hop_n / SAMPLE_RATE,
             "newest window wins" if live else "every window")

    cancelled = False
    blocks = source.blocks()
    try:
        for block, arrival in blocks:
            samples = feed.push(block, arrival)
            stats.audio_seconds, stats.overflows = feed.total / SAMPLE_RATE, source.overflows
            if len(samples):
                stats.input_dbfs = level_db(samples)
            if worker.error is not None or feed.full:
                break
        padded = feed.end(shortest_window(classifier))
        if padded is not None:
            log.info("input shorter than one window (%.3f s): one window of %.3f s", feed.total / SAMPLE_RATE,
                     len(padded.samples) / SAMPLE_RATE)
        if feed.total == 0:
            log.warning("the input held no audio")
    except KeyboardInterrupt:
        cancelled = True
        log.info("interrupted; stopping")
    finally:
        blocks.close()  # stops a microphone, closes a file
        stats.audio_seconds = feed.total / SAMPLE_RATE
        stats.overflows = source.overflows
        worker.finish(cancel=cancelled or worker.error is not None)
    return stats, worker.close_events()
