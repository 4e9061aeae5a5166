"""Network sources: anything FFmpeg opens (RTSP, HTTP(S) streams and HLS, SRT, RTMP, ...) through PyAV.

:class:`UrlSource` has the interface of the sources in :mod:`audioclip.stream.sources`: ``blocks()``
yields ``(block, arrival)`` pairs, float32 ``(frames, channels)`` at the stream's own rate. Its
``rate`` and ``channels`` are known only once it is connected, and may change between blocks (a
camera that switches codec): read them after every block. Rate conversion stays in the stream's
resampler; here only the sample format and layout are converted.

It connects once: a failure, or the end of the stream, ends it with :class:`SourceError`.
Reconnecting is the job of :class:`audioclip.monitor.supervisor.ResilientSource`.

URLs may carry credentials (``rtsp://user:password@camera/...``): every log line and error names
the URL through :func:`redact`.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np

from ..stream.sources import BLOCK_SECONDS
from .config_parse import redact

log = logging.getLogger(__name__)

SUPPORTED_SCHEMES = ("rtsp", "rtsps", "http", "https", "srt", "rtmp", "rtmps", "rtp", "udp", "tcp", "file")
"""URL schemes a ``url`` source accepts (FFmpeg's protocols for network audio, and local files)."""

class SourceError(RuntimeError):
    """A source cannot be opened, failed while reading, or ended."""


def check_url(url: str) -> str:
    """The URL's scheme in lower case, or a one-line :class:`ValueError` if it is not supported."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in SUPPORTED_SCHEMES:
        what = f"unsupported URL scheme {scheme!r}" if scheme else "no URL scheme"
        raise ValueError(f"{what} in {redact(url)}: use one of {', '.join(SUPPORTED_SCHEMES)}")
    return scheme


def _options(scheme: str) -> dict[str, str]:
    """FFmpeg options for a scheme: RTSP over TCP (UDP is lost behind NAT and firewalls)."""
    return {"rtsp_transport": "tcp"} if scheme in ("rtsp", "rtsps") else {}


class UrlSource:
    """The first audio stream of a URL, decoded by PyAV (FFmpeg) to float32 ``(frames, channels)``.

    ``open_timeout`` bounds connecting and reading the stream's header, ``read_timeout`` the wait for
    each packet; either expiring is a :class:`SourceError` (PyAV checks them in an FFmpeg interrupt
    callback, so a silent server cannot block a read for longer). ``interrupt()`` (any thread) ends
    ``blocks()`` at the next frame; PyAV has no way to cut a blocked read short, so a read that waits
    on a silent server ends at ``read_timeout``.
    """

    def __init__(self, url: str, *, name: str, open_timeout: float = 10.0, read_timeout: float = 10.0):
        self.scheme = check_url(url)
        self.url = url
        self.name = name
        self.open_timeout = open_timeout
        self.read_timeout = read_timeout
        self.rate: float | None = None
        self.channels: int | None = None
        self.live = self.scheme != "file"  # a file URL is read as fast as it is consumed, not paced
        self.overflows = 0  # FFmpeg buffers network input itself; nothing here drops audio
        self.decode_errors = 0
        self._container = None
        self._interrupted = threading.Event()

    def __repr__(self) -> str:
        return f"UrlSource({redact(self.url)!r}, name={self.name!r})"

    def _fail(self, what: str, error: BaseException | None = None) -> SourceError:
        detail = f": {redact(self._reason(error))}" if error is not None else ""
        return SourceError(f"{redact(self.url)}: {what}{detail}")

    def _reason(self, error: BaseException) -> str:
        """What went wrong, in FFmpeg's words without the errno (``[Errno 875574520]`` is an FFmpeg tag, and
        ``[Errno 5] Input/output error`` is all FFmpeg says of a host that does not resolve)."""
        text = getattr(error, "strerror", None) or str(error)  # PyAV's errors, OSError or not, carry strerror
        if getattr(error, "errno", None) == errno.EIO:
            host = urlsplit(self.url).hostname
            if host:
                try:
                    socket.getaddrinfo(host, None)
                except OSError:
                    return f"unknown host {host}"
        return text.replace(f": {self.url!r}", "")

    def open(self) -> None:
        """Connect and find the first audio stream; sets ``rate`` and ``channels``."""
        import av

        if self._interrupted.is_set():
            raise self._fail("interrupted")
        # PyAV's timeout is an FFmpeg interrupt callback, checked while connecting and reading
        timeout = (self.open_timeout, self.read_timeout)
        try:
            container = av.open(self.url, options=_options(self.scheme), timeout=timeout)
        except (av.error.FFmpegError, OSError) as e:
            raise self._fail("cannot open", e) from e
        self._container = container
        if not container.streams.audio:
            self.close()
            raise self._fail("no audio stream")
        context = container.streams.audio[0].codec_context
        self.rate, self.channels = float(context.sample_rate), context.layout.nb_channels
        log.debug("%s: %s, %g Hz, %d ch", self.name, context.name, self.rate, self.channels)

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        """Blocks of at least ``BLOCK_SECONDS`` (RTSP packs a few milliseconds per packet)."""
        import av

        if self._container is None:
            self.open()
        container = self._container
        converter, shape, pending, frames = None, None, [], 0
        try:
            for frame in self._frames(container):
                if self._interrupted.is_set():
                    break
                if (frame.sample_rate, frame.layout.name) != shape:
                    if pending:  # the blocks of the old format go out before it changes
                        yield np.concatenate(pending), time.monotonic()
                        pending, frames = [], 0
                    shape = frame.sample_rate, frame.layout.name
                    converter = av.AudioResampler(format="flt", layout=frame.layout.name, rate=frame.sample_rate)
                    self.rate, self.channels = float(frame.sample_rate), frame.layout.nb_channels
                for converted in converter.resample(frame):
                    pending.append(converted.to_ndarray().reshape(-1, self.channels))
                    frames += converted.samples
                if frames >= BLOCK_SECONDS * self.rate:
                    yield (np.concatenate(pending) if len(pending) > 1 else pending[0]), time.monotonic()
                    pending, frames = [], 0
        except (av.error.FFmpegError, OSError) as e:
            raise self._fail("interrupted" if self._interrupted.is_set() else "read failed", e) from e
        finally:
            self.close()
        raise self._fail("interrupted" if self._interrupted.is_set() else "stream ended")

    def _frames(self, container) -> Iterator:
        """Decoded frames; a packet the decoder refuses (a glitch in a radio stream) is skipped and counted."""
        import av

        stream = container.streams.audio[0]
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError as e:
                self.decode_errors += 1
                log.debug("%s: packet skipped: %s", self.name, redact(str(e)))
                continue
            yield from (frame for frame in frames if frame.samples)

    def interrupt(self) -> None:
        """End ``blocks()`` at the next frame, or when a connect or read under way times out. Any thread."""
        self._interrupted.set()

    def close(self) -> None:
        """Release the connection; call from the thread that reads (use ``interrupt()`` from others)."""
        container, self._container = self._container, None
        if container is not None:
            container.close()
