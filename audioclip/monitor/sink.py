"""The base of every sink: a bounded queue, a delivery thread, retries with backoff, counters.

The inference path hands a sink its items with ``put()``, which never blocks: the queue is
bounded and, when full, its oldest item is dropped and counted. One thread per sink takes the
items in order and calls ``deliver(item)`` (the subclass's job, or a callable given). An exception
keeps the item and retries it after a jittered exponential backoff (``Undeliverable`` drops it
instead); the fault is logged once when an outage starts and once when deliveries succeed again,
never once per retry.

A delivery thread that dies (a bug, not a failed delivery) is restarted by ``ensure_running()``,
which ``put()`` calls and a service calls periodically. ``close(timeout)`` delivers what it can
within the timeout, counts the rest as dropped and stops.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable

from .backoff import backoff_delay, check_backoff

log = logging.getLogger(__name__)


class Undeliverable(Exception):
    """Raised by ``deliver()`` for an item that no retry can deliver: it is dropped (and counted)."""


class QueueSink:
    """Deliver items (any objects) from a bounded queue on a thread of its own.

    Subclass it and write ``deliver()``, or wrap an existing object's method:
    ``QueueSink("database", deliver=store.write_event)``.

    ``backoff`` is ``(first, longest)`` seconds between retries: the delay doubles from ``first``
    up to ``longest``, each wait jittered by :func:`~audioclip.monitor.backoff.backoff_delay` so that
    sinks failing together do not retry together. Counters: ``delivered``, ``dropped`` (queue full or left at
    close), ``failures`` (failed delivery attempts), ``restarts`` (dead threads replaced).
    """

    def __init__(self, name: str, *, queue_size: int = 1000, backoff: tuple[float, float] = (1.0, 60.0),
                 deliver: Callable[[Any], None] | None = None) -> None:
        if queue_size < 1:
            raise ValueError(f"{name}: queue_size must be at least 1, got {queue_size}")
        self.name = name
        if deliver is not None:
            self.deliver = deliver
        self.queue_size = queue_size
        self.backoff = check_backoff(backoff, name)
        self.delivered = 0
        self.dropped = 0
        self.failures = 0
        self.restarts = 0
        self._queue: collections.deque = collections.deque()
        self._current = None          # the item being delivered, kept until it succeeds
        self._has_current = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._deadline = float("inf")
        self._woken = False
        self._attempt = 0             # failed attempts in a row for the current outage

    # -- what subclasses provide -------------------------------------------------------------
    def deliver(self, item) -> None:
        """Deliver one item; raise to keep it and retry after a backoff."""
        raise NotImplementedError

    def shutdown(self, deadline: float) -> None:
        """Release the sink's resources after its thread stopped (``deadline`` is monotonic)."""

    # -- the caller's side -------------------------------------------------------------------
    def start(self) -> QueueSink:
        with self._cond:
            if self._thread is None and not self._closing:
                self._spawn()
        return self

    def put(self, item) -> None:
        """Queue an item; never blocks. When the queue is full its oldest item is dropped."""
        with self._cond:
            if self._closing:
                self.dropped += 1
                return
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(item)
            self._cond.notify_all()
        self.ensure_running()

    @property
    def pending(self) -> int:
        """Items queued or being delivered."""
        with self._cond:
            return len(self._queue) + self._has_current

    def announce(self, sources: list[str], labels: list[str]) -> None:
        """The sources and the labels that raise events, at the start and after each reload; a sink that
        publishes something per source or label (MQTT) overrides it, the others have nothing to do."""

    def source_available(self, source: str, up: bool) -> None:
        """``source`` went up or down; a sink that publishes availability (MQTT) overrides it."""

    def queued(self) -> list:
        """A copy of the items queued or being delivered, oldest first."""
        with self._cond:
            return ([self._current] if self._has_current else []) + list(self._queue)

    def ensure_running(self) -> bool:
        """Restart the delivery thread if it died; True when it did."""
        with self._cond:
            if self._thread is None or self._thread.is_alive() or self._closing:
                return False
            self.restarts += 1
            log.error("%s: delivery thread had died; restarted it (%d restarts)", self.name, self.restarts)
            self._spawn()
            return True

    def wake(self) -> None:
        """Cut the current backoff short, e.g. when the sink knows its target is back."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds, drop the rest, stop."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._deadline = deadline
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            left = len(self._queue) + self._has_current
            self._queue.clear()
            self._current, self._has_current = None, False
            self.dropped += left
            self._closed = True
        if left:
            log.warning("%s: closed with %d undelivered items (dropped)", self.name, left)
        self.shutdown(deadline)

    # -- for subclasses whose deliver() waits --------------------------------------------------
    def closing_past_deadline(self) -> bool:
        """True once ``close()`` was called and its time is up: a waiting deliver() should give up."""
        return self._closing and time.monotonic() >= self._deadline

    # -- the delivery thread ----------------------------------------------------------------
    def _spawn(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sink {self.name}", daemon=True)
        self._thread.start()

    def _next(self):
        """The item to deliver, or raise StopIteration when closing and nothing is left."""
        with self._cond:
            while not self._has_current:
                if self._queue:
                    self._current, self._has_current = self._queue.popleft(), True
                    self._woken = False
                elif self._closing:
                    raise StopIteration
                else:
                    self._cond.wait()
            if self.closing_past_deadline() or self._closed:
                raise StopIteration
            return self._current

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._next()
                except StopIteration:
                    return
                try:
                    self.deliver(item)
                except Undeliverable as e:
                    self._give_up(e)
                    continue
                except Exception as e:  # noqa: BLE001 - any other failure keeps the item for a retry
                    self._failed(e)
                    continue
                self._succeeded()
        except BaseException:  # a bug: log it; ensure_running() starts a new thread
            log.error("%s: delivery thread died", self.name, exc_info=True)

    def _failed(self, error: Exception) -> None:
        with self._cond:
            self.failures += 1
            if self.closing_past_deadline():
                return  # close() counts the item as dropped and logs it
            if self._attempt == 0:
                log.warning("%s: delivery failed (%s); keeping %d items and retrying with backoff",
                            self.name, str(error) or type(error).__name__,
                            len(self._queue) + self._has_current)
            delay = backoff_delay(self.backoff, self._attempt)
            self._attempt += 1
            end = min(time.monotonic() + delay, self._deadline)
            while not self._woken and not self._closed and (left := end - time.monotonic()) > 0:
                self._cond.wait(left)
            self._woken = False

    def _give_up(self, error: Undeliverable) -> None:
        with self._cond:
            self.failures += 1
            if not self._closed:
                self._current, self._has_current = None, False
                self.dropped += 1
        log.warning("%s: dropped an item that cannot be delivered: %s", self.name, error)

    def _succeeded(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._current, self._has_current = None, False
            self.delivered += 1
            if self._attempt:
                log.info("%s: delivering again after %d failed attempts", self.name, self._attempt)
                self._attempt = 0
