"""The live stream of the web page: what the monitor hears, pushed to every open page without ever waiting on one.

The monitor's threads call :meth:`LiveHub.publish` with a message (a dict); the hub serialises it once and
hands it to each subscriber's bounded queue on the web server's event loop (``call_soon_threadsafe`` and
``put_nowait``). A subscriber whose queue is full (a slow or vanished page) loses that message, counted in
its ``dropped``: listening never waits for a browser. With no subscriber, publishing costs one check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

log = logging.getLogger(__name__)

END = ""
"""What :meth:`Subscriber.next` gives when the stream is over."""

QUEUE_SIZE = 256
"""Messages a subscriber may have waiting; beyond that the newest are dropped for it (about a minute of
windows of a few sources at a 0.5-s hop)."""


class Subscriber:
    """One open page: a bounded queue of serialised messages on the server's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int = QUEUE_SIZE):
        self.loop = loop
        self.queue: asyncio.Queue[str] = asyncio.Queue(size)
        self.dropped = 0
        self.delivered = 0
        self.ended = False

    def offer(self, text: str) -> None:
        """On the event loop: queue ``text``, or drop it when the page is behind."""
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.dropped += 1

    def end(self) -> None:
        """On the event loop: the stream ends after what is queued (the server is stopping)."""
        self.ended = True
        if not self.queue.full():  # else next() sees ``ended`` once the queue is read
            self.queue.put_nowait(END)

    async def next(self, timeout: float) -> str | None:
        """The next message; None after ``timeout`` seconds without one (time for a keep-alive); :data:`END`
        when the server stops."""
        if self.ended and self.queue.empty():
            return END
        try:
            text = await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return END if self.ended else None
        self.delivered += 1
        return text


class LiveHub:
    """Fans the monitor's live messages out to the subscribed pages; any thread may publish."""

    def __init__(self):
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        self.on_change = None  # called with the number of subscribers when it changes (the spectrogram's switch)

    @property
    def listening(self) -> int:
        return len(self._subscribers)

    def subscribe(self, loop: asyncio.AbstractEventLoop, size: int = QUEUE_SIZE) -> Subscriber:
        subscriber = Subscriber(loop, size)
        with self._lock:
            self._subscribers = [*self._subscribers, subscriber]
            count = len(self._subscribers)
        self._changed(count)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s is not subscriber]
            count = len(self._subscribers)
        if subscriber.dropped:
            log.info("a live page left having missed %d of %d messages (it was too slow)", subscriber.dropped,
                     subscriber.dropped + subscriber.delivered)
        self._changed(count)

    def _changed(self, count: int) -> None:
        if self.on_change is not None:
            self.on_change(count)

    def close(self) -> None:
        """End every page's stream (the server is stopping)."""
        for subscriber in self._subscribers:
            try:
                subscriber.loop.call_soon_threadsafe(subscriber.end)
            except RuntimeError:
                pass

    def publish(self, message: dict) -> None:
        """Send ``message`` (JSON-able, with a ``type``) to every page; stamps it with ``sent`` (Unix seconds)."""
        subscribers = self._subscribers  # replaced, never changed in place: no lock needed to read it
        if not subscribers:
            return
        text = json.dumps({**message, "sent": time.time()}, separators=(",", ":"))
        for subscriber in subscribers:
            try:
                subscriber.loop.call_soon_threadsafe(subscriber.offer, text)
            except RuntimeError:  # its loop is closed: the server is stopping
                pass
