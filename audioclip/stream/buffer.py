"""Bounded buffers: a lock-free ring for the audio callback, and the window scheduler over the 44.1 kHz stream."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np


class BlockRing:
    """Single-producer single-consumer ring of ``(frames, channels)`` float32 audio.

    :meth:`write` is meant for an audio callback: it copies into preallocated memory and never
    blocks, allocates or logs. When the reader falls behind and a block does not fit, the block is
    dropped and counted in ``overflows`` / ``overflow_frames``.
    """

    def __init__(self, capacity: int, channels: int):
        if capacity < 1 or channels < 1:
            raise ValueError(f"ring needs a positive capacity and channel count, got {capacity}, {channels}")
        self.capacity, self.channels = int(capacity), int(channels)
        self._data = np.zeros((self.capacity, self.channels), np.float32)
        self._written = 0  # frames ever written; only the writer changes it
        self._read = 0  # frames ever read; only the reader changes it
        self.last_write_time = 0.0
        self.overflows = 0
        self.overflow_frames = 0
        self._ready = threading.Event()

    def write(self, block: np.ndarray) -> None:
        n = len(block)
        start = self._written
        if n > self.capacity - (start - self._read):
            self.overflows += 1
            self.overflow_frames += n
            return
        i = start % self.capacity
        first = min(n, self.capacity - i)
        self._data[i:i + first] = block[:first]
        if first < n:
            self._data[:n - first] = block[first:]
        self.last_write_time = time.monotonic()
        self._written = start + n
        self._ready.set()

    def read(self, timeout: float | None = None) -> tuple[np.ndarray, float]:
        """All unread frames (waiting up to ``timeout`` for some) and the time of the last write."""
        if self._written == self._read and timeout:
            self._ready.wait(timeout)
        self._ready.clear()
        end, stamp = self._written, self.last_write_time
        n = end - self._read
        i = self._read % self.capacity
        first = min(n, self.capacity - i)
        if first < n:
            out = np.concatenate([self._data[i:i + first], self._data[:n - first]])
        else:
            out = self._data[i:i + n].copy()
        self._read = end
        return out, stamp

    def __len__(self) -> int:
        return self._written - self._read


@dataclass
class Window:
    """Window ``index`` covers samples ``[start, start + len(samples))`` of the 44.1 kHz stream."""

    index: int
    start: int
    samples: np.ndarray
    arrival: float
    """``time.monotonic()`` when its last sample reached the process."""


class WindowScheduler:
    """Cuts the 44.1 kHz mono stream into windows ``[k * hop, k * hop + window)``.

    A window is ready as soon as its last sample has been pushed. The scheduler keeps only the
    most recent ``window + hop + slack`` samples; the caller copies out the windows it wants
    (:meth:`take`) and skips the others (:meth:`skip`).
    """

    def __init__(self, window: int, hop: int, slack: int = 0):
        if window < 1 or hop < 1:
            raise ValueError(f"window and hop must be at least one sample, got {window} and {hop}")
        self.window, self.hop = int(window), int(hop)
        self.capacity = self.window + self.hop + max(int(slack), 0)
        self._ring = np.zeros(self.capacity, np.float32)
        self.total = 0  # samples pushed so far
        self.next_index = 0  # the next window not yet taken or skipped
        self.arrival = 0.0

    def push(self, samples: np.ndarray, arrival: float) -> list[int]:
        """Append at most ``hop + slack`` samples; return the indices of the windows now ready.

        Take or skip the ready windows before the next push: it may overwrite them.
        """
        samples = np.asarray(samples, np.float32)
        n = len(samples)
        if n > self.capacity - self.window:
            raise ValueError(f"push at most {self.capacity - self.window} samples at a time, got {n}")
        i = self.total % self.capacity
        first = min(n, self.capacity - i)
        self._ring[i:i + first] = samples[:first]
        self._ring[:n - first] = samples[first:]
        self.total += n
        self.arrival = arrival
        return self.ready()

    def ready(self) -> list[int]:
        last = (self.total - self.window) // self.hop if self.total >= self.window else -1
        return list(range(self.next_index, last + 1))

    def take(self, index: int) -> Window:
        """Copy window ``index`` (which must be ready and still buffered) out of the ring."""
        start = index * self.hop
        if start + self.window > self.total or start < self.total - self.capacity:
            raise IndexError(f"window {index} is not buffered (stream has {self.total} samples)")
        idx = np.arange(start, start + self.window) % self.capacity
        self.next_index = index + 1
        return Window(index, start, self._ring[idx], self.arrival)

    def skip(self, index: int) -> None:
        self.next_index = max(self.next_index, index + 1)

    def finish(self, shortest: int | None = None) -> Window | None:
        """At the end of input: a stream shorter than one window gives window 0, as it is, zero-padded
        only up to ``shortest`` samples (what the model needs; the whole window when None)."""
        if self.next_index > 0 or self.total == 0 or self.total >= self.window:
            return None
        length = self.window if shortest is None else min(self.window, max(self.total, shortest))
        samples = np.zeros(length, np.float32)
        samples[:self.total] = self._ring[:self.total]
        self.next_index = 1
        return Window(0, 0, samples, self.arrival)
