"""What the live page learns besides windows and events, made only while a page listens: each source's state
when it changes, the labels after a change, and each source's spectrogram of the last 10 s, at most once a second.

A :class:`LiveWatch` thread wakes twice a second while the :class:`~audioclip.monitor.web.live.LiveHub` has subscribers
and sleeps otherwise; while it watches, each source's pipeline hands it a copy of its audio (``pipeline.tap``).
"""

from __future__ import annotations

import logging
import threading
import time

from .live import LiveHub
from .spectrogram import FrontEnd, LiveSpectrogram
from .view import source_state

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5
SPECTROGRAM_SECONDS = 1.0
"""The most often a source's live spectrogram is remade."""
SPECTROGRAM_SPAN = 10.0
"""Seconds of audio the live spectrogram shows."""


class LiveWatch:
    """Publishes source states, labels and spectrograms of ``monitor`` to ``hub`` while it has subscribers."""

    def __init__(self, monitor, hub: LiveHub):
        self.monitor, self.hub = monitor, hub
        self.spectrograms: dict[str, LiveSpectrogram] = {}
        self.images: dict[str, tuple[int, bytes]] = {}  # source -> (version, PNG)
        self._front: FrontEnd | None = None
        self._front_failed = False
        self._states: dict[str, tuple] = {}
        self._labels: list[str] | None = None
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="web live", daemon=True)
        hub.on_change = self._listeners_changed

    def start(self) -> LiveWatch:
        self._thread.start()
        return self

    def close(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify_all()
        self._thread.join(5.0)
        self._untap()

    def image(self, source: str) -> tuple[int, bytes] | None:
        return self.images.get(source)

    # -- the pages come and go --------------------------------------------------------------------
    def _listeners_changed(self, count: int) -> None:
        with self._wake:
            if count == 0:
                self._untap()
            else:
                self._states.clear()  # a new page learns every state (and the labels) at once
                self._labels = None
            self._wake.notify_all()

    def _tap(self) -> None:
        front = self._front_end()
        if front is None:
            return
        for p in self.monitor.pipelines:
            if p.tap is None:
                spectrogram = self.spectrograms.get(p.name)
                if spectrogram is None or spectrogram.front is not front:
                    spectrogram = self.spectrograms[p.name] = LiveSpectrogram(front, SPECTROGRAM_SPAN)
                p.tap = spectrogram.tap

    def _untap(self) -> None:
        for p in self.monitor.pipelines:
            p.tap = None

    def _front_end(self) -> FrontEnd | None:
        """The model's front end; rebuilt when a reload replaced the classifier (an ONNX export's is another)."""
        if self._front_failed:
            return None
        if self._front is None:
            try:
                self._front = FrontEnd(self.monitor.classifier)
            except ValueError as e:
                log.warning("no live spectrogram: %s", e)
                self._front_failed = True
        return self._front

    # -- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        next_spectrogram = 0.0
        while True:
            with self._wake:
                while not self._stop and self.hub.listening == 0:
                    self._wake.wait()
                if self._stop:
                    return
            try:
                self._tap()
                self._publish_states()
                if time.monotonic() >= next_spectrogram:
                    next_spectrogram = time.monotonic() + SPECTROGRAM_SECONDS
                    self._publish_spectrograms()
            except Exception:  # a bug here must not end the live page's news for good
                log.exception("web live: publishing failed")
            with self._wake:
                if not self._stop and self.hub.listening:
                    self._wake.wait(TICK_SECONDS)

    def _publish_states(self) -> None:
        for p in self.monitor.pipelines:
            state, retry = source_state(p)
            shown = (state, None if retry is None else round(retry))
            if self._states.get(p.name) != shown:
                self._states[p.name] = shown
                self.hub.publish({"type": "state", "source": p.name, "state": state, "retry_in_s": retry})
        labels = list(self.monitor.labels)
        if labels != self._labels:
            self._labels = labels
            self.hub.publish({"type": "labels", "labels": labels})

    def _publish_spectrograms(self) -> None:
        for name, spectrogram in list(self.spectrograms.items()):
            if spectrogram.update():
                self.images[name] = (spectrogram.version, spectrogram.png())
                self.hub.publish({"type": "spectrogram", "source": name,
                                  "png": f"/api/sources/{name}/spectrogram.png?v={spectrogram.version}"})
