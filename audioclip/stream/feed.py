"""Audio into windows, for every command: one run of continuous audio of a source, mixed to mono,
resampled to 44.1 kHz and cut into windows, with the rule for a live source that falls behind
(newest window wins), the resampler's tail at the end of input and the one short window of an
input shorter than a window.

``audioclip-stream`` (:func:`~audioclip.stream.runner.run_stream`) and each monitor source
(:class:`~audioclip.monitor.pipeline.SourcePipeline`) feed their audio through a :class:`WindowFeed`,
and build each classified window's result with :func:`~audioclip.stream.engine.window_result`:
the same file gives the same windows, times, levels and scores through both.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .buffer import Window, WindowScheduler
from .config import StreamConfig
from .resample import StreamResampler, to_mono


class WindowFeed:
    """Cuts one run of continuous audio at ``rate`` Hz into the windows ``config`` describes.

    ``offer(window)`` receives each window to classify, in order, as soon as its last sample came;
    ``skip()`` is called once per window not offered. A ``live`` source offers, of the windows a block
    completes, only the newest: the others are already stale when the block arrives (a block longer
    than a hop: a microphone whose reader lagged, a paced file with a short hop). Other sources offer
    every window. ``on_audio(mono, end)``: the resampled samples of each block before its windows are
    cut, ``end`` the feed's sample count after them. ``limit``: samples after which the feed takes no
    more (:attr:`full`). Window starts count from the start of this run.
    """

    def __init__(self, rate: float, config: StreamConfig, *, live: bool, offer: Callable[[Window], None],
                 skip: Callable[[], None], on_audio: Callable[[np.ndarray, int], None] | None = None,
                 limit: int | None = None):
        self.config, self.live, self.limit = config, live, limit
        self.offer, self.skip, self.on_audio = offer, skip, on_audio
        self.rate = float(rate)
        self._resampler = StreamResampler(rate)
        self._scheduler = WindowScheduler(config.window_samples, config.hop_samples)

    @property
    def total(self) -> int:
        """Samples (44.1 kHz) taken so far."""
        return self._scheduler.total

    @property
    def full(self) -> bool:
        """Whether ``limit`` samples have been taken."""
        return self.limit is not None and self.total >= self.limit

    def push(self, block: np.ndarray, arrival: float) -> np.ndarray:
        """A block at the source's rate and channels (``arrival``: when its last frame came); returns its
        resampled mono samples that the feed took."""
        return self._add(self._resampler.process(to_mono(block)), arrival)

    def end(self, shortest: int | None = None) -> Window | None:
        """The end of the input: the resampler's tail, then, for an input shorter than one window, that
        window as long as the input, zero-padded only up to ``shortest`` samples (None: the whole window),
        which is offered and returned."""
        self._add(self._resampler.flush(), self._scheduler.arrival)
        padded = self._scheduler.finish(shortest)
        if padded is not None:
            self.offer(padded)
        return padded

    def _add(self, mono: np.ndarray, arrival: float) -> np.ndarray:
        if self.limit is not None:
            mono = mono[:max(self.limit - self.total, 0)]
        if not len(mono):
            return mono
        if self.on_audio is not None:
            self.on_audio(mono, self.total + len(mono))
        scheduler, hop = self._scheduler, self.config.hop_samples
        for i in range(0, len(mono), hop):  # the scheduler takes at most a hop at a time
            ready = scheduler.push(mono[i:i + hop], arrival)
            if not self.live:
                for index in ready:
                    self.offer(scheduler.take(index))
        if self.live:
            ready = scheduler.ready()
            for index in ready[:-1]:
                scheduler.skip(index)
                self.skip()
            if ready:
                self.offer(scheduler.take(ready[-1]))
        return mono
