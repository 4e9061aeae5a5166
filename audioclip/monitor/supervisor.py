"""A source that never gives up: reopens any source that fails, ends or stalls, for ever, until closed.

``ResilientSource(open_fn, name=...)`` calls ``open_fn()`` for a fresh source object (a
:class:`~audioclip.monitor.sources.UrlSource`, a microphone, a looped file: see :func:`url_opener`,
:func:`device_opener`, :func:`file_opener`) and reads its ``blocks()`` on its own thread. Iterating
it (from any one thread) yields, in order:

- :class:`Block` ``(samples, arrival, rate, channels)``: float32 ``(frames, channels)`` at ``rate``,
  and the ``time.monotonic()`` at which its last frame arrived. ``rate`` and ``channels`` are those
  of the connection the block came from: a source may come back with another format.
- :class:`StreamGap` ``(seconds, reason)`` between two blocks whenever continuity breaks: after a
  reconnect (``seconds`` of audio lost), after a change of rate or channels within a connection
  (``seconds`` 0), or where blocks were dropped because the consumer fell behind. A consumer
  restarts its resampler and windows after a gap, so that no window spans one.
- :class:`SourceDown` ``(reason)`` as soon as a source that was up goes down (it failed, ended or
  stalled), before the :class:`StreamGap` that its return brings: a consumer ends what was going on
  at once, not when the source comes back (which may be never).

The source is a small state machine: ``connecting`` -> ``up`` -> (failure, end of stream, or no
audio for ``stall_seconds``) -> ``backing off`` -> ``connecting`` ... Waits between attempts are
jittered and double from ``backoff[0]`` to ``backoff[1]`` seconds (:func:`.backoff.backoff_delay`,
as the sinks' retries); a connection that stayed up for
``STABLE_SECONDS`` resets them (a source that fails right after each connect keeps backing off).
One log line when the source goes down (with the reason, credentials redacted) and one when it is
up again; the retries in between log at DEBUG only.

Counters: ``state``, ``up``, ``reconnects`` (times it came back after having been up),
``seconds_lost`` (audio lost to outages: the reconnect gaps' seconds), ``overflows`` (the sources'
own overflows plus blocks dropped here because the consumer fell behind).

``close()`` from any thread returns within about two seconds and ends the iteration; a source that
blocks is interrupted through its ``interrupt()`` if it has one, else its ``close()``. The stall
watchdog runs in the consuming iterator, which wakes at least every 0.2 s; a :class:`UrlSource`
blocked on a silent server ends at its own ``read_timeout``, so give :func:`url_opener` a
``read_timeout`` no longer than ``stall_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from .backoff import backoff_delay, check_backoff
from .sources import SourceError, UrlSource, check_url, redact

log = logging.getLogger(__name__)

CONNECTING, UP, BACKING_OFF, CLOSED = "connecting", "up", "backing off", "closed"

STABLE_SECONDS = 30.0
"""Time up after which a failure counts as a first failure again (the backoff restarts at its shortest)."""


class Block(NamedTuple):
    samples: np.ndarray
    arrival: float
    rate: float
    channels: int


class StreamGap(NamedTuple):
    seconds: float
    reason: str


class SourceDown(NamedTuple):
    reason: str


def url_opener(url: str, *, name: str, open_timeout: float = 10.0, read_timeout: float = 10.0) -> Callable[[], Any]:
    """A factory of :class:`UrlSource`; an unsupported scheme is a :class:`ValueError` now, not at each retry."""
    check_url(url)
    return lambda: UrlSource(url, name=name, open_timeout=open_timeout, read_timeout=read_timeout)


def device_opener(device: str | int | None) -> Callable[[], Any]:
    """A factory of microphone sources; each call finds ``device`` (index, name or part of one) again,
    also when it came back under another index or name (:class:`~audioclip.stream.devices.DeviceFinder`)."""
    from ..stream.devices import DeviceFinder
    from ..stream.sources import MicrophoneSource

    find = DeviceFinder(device)
    return lambda: MicrophoneSource(find())


def file_opener(path: str | Path, *, loop: bool = True, realtime: bool = True) -> Callable[[], Any]:
    """A factory of file sources paced like a live one; with ``loop`` it plays again from the start, seamlessly."""
    from ..stream.sources import FileSource

    if not loop:
        return lambda: FileSource(path, realtime=realtime)
    return lambda: _LoopedFile(path, realtime=realtime)


class _LoopedFile:
    """A :class:`FileSource` read again from the start at its end (a :class:`ValueError` if the file is empty)."""

    def __init__(self, path: str | Path, *, realtime: bool):
        from ..stream.sources import FileSource

        self._open = lambda: FileSource(path, realtime=realtime)
        self._file = self._open()
        self.rate, self.channels, self.live, self.name = self._file.rate, self._file.channels, realtime, self._file.name
        self.overflows = 0

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        while True:
            delivered = False
            for block in self._file.blocks():
                delivered = True
                yield block
            if not delivered:
                raise SourceError(f"{self.name}: no audio in the file")
            self._file = self._open()

    def close(self) -> None:
        self._file.close()


class ResilientSource:
    """Reads a source made by ``open_fn`` on a thread of its own and reopens it for ever (see the module)."""

    def __init__(self, open_fn: Callable[[], Any], *, name: str, stall_seconds: float = 10.0,
                 backoff: tuple[float, float] = (1.0, 60.0), max_blocks: int = 500):
        if stall_seconds <= 0:
            raise ValueError(f"stall_seconds must be > 0, got {stall_seconds}")
        check_backoff(backoff, name)
        if max_blocks < 2:
            raise ValueError(f"max_blocks must be at least 2, got {max_blocks}")
        self.open_fn, self.name = open_fn, name
        self.stall_seconds, self.backoff, self.max_blocks = stall_seconds, backoff, max_blocks
        self.state = CONNECTING
        self.reconnects = 0
        self.seconds_lost = 0.0
        self.last_error: str | None = None
        self.rate: float | None = None
        self.channels: int | None = None
        self._dropped = 0
        self._closed_overflows = 0
        self._failures = 0
        self._up_since: float | None = None
        self._been_up = False
        self._down_since: float | None = None  # when the current outage (or the first failed attempt) began
        self._retry_at: float | None = None  # when the next attempt starts, while backing off
        self._broken: str | None = None  # why the next block is not continuous with the last one
        self._last_arrival: float | None = None
        self._alive_at = 0.0  # when the open source last showed life (opened, or delivered a block)
        self._stall: str | None = None
        self._source = None
        self._items: deque = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def up(self) -> bool:
        return self.state == UP

    @property
    def been_up(self) -> bool:
        """Whether it ever delivered audio."""
        return self._been_up

    @property
    def retry_in(self) -> float | None:
        """Seconds until the next attempt while backing off, else None."""
        retry_at = self._retry_at
        return None if self.state != BACKING_OFF or retry_at is None else max(0.0, retry_at - time.monotonic())

    @property
    def down_for(self) -> float | None:
        """Seconds since the current outage began (since the first failed attempt, if it was never up); None while
        up or before any attempt failed."""
        since = self._down_since
        return None if self.state == UP or since is None else time.monotonic() - since

    @property
    def overflows(self) -> int:
        source = self._source
        return self._dropped + self._closed_overflows + (getattr(source, "overflows", 0) if source else 0)

    def start(self) -> None:
        """Start reading (iterating starts it too)."""
        with self._cond:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name=f"source {self.name}", daemon=True)
                self._thread.start()

    def __iter__(self) -> Iterator[Block | StreamGap | SourceDown]:
        return self.blocks()

    def blocks(self) -> Iterator[Block | StreamGap | SourceDown]:
        self.start()
        while True:
            with self._cond:
                if not self._items and not self._stop.is_set():
                    self._cond.wait(0.2)
                item = self._items.popleft() if self._items else None
            if self._stop.is_set():
                return
            self._watch()
            if item is not None:
                yield item

    def close(self, timeout: float = 2.0) -> None:
        """Stop reading; returns within about ``timeout`` seconds. Any thread.

        A read blocked on a silent server cannot always be cut short (see :class:`UrlSource`): the
        reading thread then releases its connection when the read times out, after this returns.
        """
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(min(0.5, timeout))
            source = self._source
            if thread.is_alive() and source is not None:
                self._interrupt(source)
                thread.join(max(0.0, timeout - 0.5))
        self.state = CLOSED

    # the reading thread

    def _run(self) -> None:
        while not self._stop.is_set():
            self.state = CONNECTING
            self._stall = None
            error: str | None = None
            try:
                source = self.open_fn()
                with self._cond:
                    self._source, self._alive_at = source, time.monotonic()
                if self._stop.is_set():
                    break
                for samples, arrival in source.blocks():
                    if self._stop.is_set():
                        break
                    self._deliver(samples, arrival, float(source.rate), int(source.channels))
                else:
                    error = "the stream ended"
            except Exception as e:  # any failure of a source is a reason to reopen it
                error = str(e) or type(e).__name__
            finally:
                self._release()
            if self._stop.is_set():
                break
            self._back_off(redact(self._stall or error or "the stream ended"))

    def _deliver(self, samples: np.ndarray, arrival: float, rate: float, channels: int) -> None:
        if self._stall:
            return  # a connection given up for stalling: it is being closed
        gap = None
        if self.state != UP:
            if self._been_up:
                self.reconnects += 1
                log.info("%s: up again after %s (%g Hz, %d ch)", self.name,
                         _seconds(arrival - (self._last_arrival or arrival)), rate, channels)
            else:
                log.info("%s: up (%g Hz, %d ch)", self.name, rate, channels)
            self.state, self._been_up, self._up_since = UP, True, time.monotonic()
            self._down_since = None
        if self._last_arrival is not None:
            if self._broken:
                lost = max(0.0, arrival - len(samples) / rate - self._last_arrival)
                self.seconds_lost += lost
                gap = StreamGap(lost, self._broken)
            elif (rate, channels) != (self.rate, self.channels):
                gap = StreamGap(0.0, f"format changed to {rate:g} Hz, {channels} ch")
        self._broken, self._alive_at = None, time.monotonic()
        self._last_arrival, self.rate, self.channels = arrival, rate, channels
        with self._cond:
            if gap is not None:
                self._items.append(gap)
            self._items.append(Block(samples, arrival, rate, channels))
            while len(self._items) > self.max_blocks:
                self._drop_oldest()
            self._cond.notify()

    def _drop_oldest(self) -> None:
        """Drop the oldest block (the consumer fell behind) and leave a gap in its place."""
        index = next(i for i, item in enumerate(self._items) if isinstance(item, Block))
        block = self._items[index]
        del self._items[index]
        self._dropped += 1
        seconds = len(block.samples) / block.rate
        for neighbour in (index - 1, index):  # a gap beside it grows; else the block becomes one
            if 0 <= neighbour < len(self._items) and isinstance(self._items[neighbour], StreamGap):
                gap = self._items[neighbour]
                self._items[neighbour] = StreamGap(gap.seconds + seconds, gap.reason)
                return
        self._items.insert(index, StreamGap(seconds, "blocks dropped: the consumer fell behind"))

    def _release(self) -> None:
        with self._cond:
            source, self._source = self._source, None
        if source is None:
            return
        self._closed_overflows += getattr(source, "overflows", 0)
        try:
            source.close()
        except Exception as e:  # a source that fails to close is gone all the same
            log.debug("%s: closing: %s", self.name, redact(str(e)))

    def _back_off(self, reason: str) -> None:
        was_up, self._up_since = self._up_since, None  # when this connection's first block came
        if was_up is not None and time.monotonic() - was_up >= STABLE_SECONDS:
            self._failures = 0
        self._failures += 1
        self._broken = self._broken or reason
        # the watchdog has logged a stall already (and left UP)
        if was_up is not None and self.state == UP:
            log.warning("%s: %s; reconnecting with backoff", self.name, reason)
            self._went_down(reason)
        elif self._failures == 1 and not self._been_up:
            log.warning("%s: %s; reconnecting with backoff", self.name, reason)
        else:
            log.debug("%s: attempt %d failed: %s", self.name, self._failures, reason)
        self.last_error = reason
        delay = backoff_delay(self.backoff, self._failures - 1)
        if self._down_since is None:
            self._down_since = time.monotonic()
        self._retry_at = time.monotonic() + delay
        self.state = BACKING_OFF
        self._stop.wait(delay)

    # the consuming thread

    def _watch(self) -> None:
        """Give up on an open source that delivered no audio for ``stall_seconds``: it is down now."""
        source = self._source
        if source is not None and self._stall is None and time.monotonic() - self._alive_at > self.stall_seconds:
            self._stall = f"no audio for {self.stall_seconds:g} s"
            if self.state == UP:
                log.warning("%s: %s; reconnecting with backoff", self.name, self._stall)
                self._went_down(self._stall)
            if self._down_since is None:
                self._down_since = time.monotonic()
            self.state, self.last_error = BACKING_OFF, self._stall
            self._interrupt(source)

    def _went_down(self, reason: str) -> None:
        """Tell the consumer, after the blocks it has yet to read, that the source is down (once per outage)."""
        with self._cond:
            self._items.append(SourceDown(reason))
            self._cond.notify()

    def _interrupt(self, source: Any) -> None:
        """Ask ``source`` to stop, on a thread of its own: a stalled device can block ``close()`` for as
        long as it stalls (PortAudio waits for its audio thread), and nobody else may wait with it."""
        threading.Thread(target=self._interrupt_now, args=(source,), name=f"interrupt {self.name}",
                         daemon=True).start()

    def _interrupt_now(self, source: Any) -> None:
        try:
            if hasattr(source, "interrupt"):
                source.interrupt()
            else:
                source.close()
        except Exception as e:  # the reading thread sees the failure and reopens
            log.debug("%s: interrupting: %s", self.name, redact(str(e)))


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s"
