"""Audio sources: a sounddevice microphone (callback mode), an audio file, raw s16le from stdin.

Every source yields ``(block, arrival)`` pairs: float32 ``(frames, channels)`` at the source's own
rate and channel count, and the ``time.monotonic()`` at which the block's last frame was
available. Live sources (a microphone, a file paced with ``realtime=True``) run at the speed of
the clock; the others as fast as the consumer reads.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from ..audio import AudioFileError
from ..model.constants import SAMPLE_RATE
from . import devices
from .devices import AudioDeviceError, InputDevice, import_sounddevice, resolve_device
from .wavpipe import WavFormat, read_wav_header

log = logging.getLogger(__name__)

BLOCK_SECONDS = 0.05
"""Block length read from files and stdin: the pacing and reaction granularity."""

RING_SECONDS = 10.0
"""Capacity of the microphone ring buffer; a consumer that stalls longer loses input (counted)."""

class FileSource:
    """Blocks of an audio file that libsndfile reads; ``realtime=True`` paces them like a live source."""

    def __init__(self, path: str | Path, *, realtime: bool = False, block_seconds: float = BLOCK_SECONDS):
        import soundfile

        self.path = Path(path)
        if self.path.is_dir():
            raise AudioFileError(f"{self.path}: is a folder, not an audio file")
        if not self.path.is_file():
            raise AudioFileError(f"{self.path}: no such file")
        try:
            self._file = soundfile.SoundFile(str(self.path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
            raise AudioFileError(f"{self.path}: not an audio file libsndfile can read ({e})") from e
        self.rate = float(self._file.samplerate)
        self.channels = self._file.channels
        self.live = realtime
        self.block = max(1, int(round(block_seconds * self.rate)))
        self.overflows = 0
        self.name = str(self.path)

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        t0, frames = time.monotonic(), 0
        try:
            while True:
                try:
                    block = self._file.read(self.block, dtype="float32", always_2d=True)
                except RuntimeError as e:
                    raise AudioFileError(f"{self.path}: cannot decode frame {frames} ({e})") from e
                if not len(block):
                    return
                frames += len(block)
                due = t0 + frames / self.rate
                if self.live:
                    delay = due - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                yield block, (due if self.live else time.monotonic())
        finally:
            self._file.close()

    def close(self) -> None:
        self._file.close()


class StdinSource:
    """Audio from a byte stream (``--input -``): a WAV file (it starts with ``RIFF``: any rate and
    channel count, PCM or float samples), else raw signed 16-bit little-endian mono PCM at 44.1 kHz.

    The first bytes are read at construction, to tell which.
    """

    def __init__(self, stream: BinaryIO, *, block_seconds: float = BLOCK_SECONDS):
        self._stream = stream
        self._pending = stream.read(4)
        if self._pending == b"RIFF":
            self.format = read_wav_header(stream, self._pending)
            self._pending = b""
            self.name = f"stdin (WAV, {self.format.rate} Hz, {self.format.channels} ch)"
        else:
            self.format = WavFormat(SAMPLE_RATE, 1, "<i2")
            self.name = f"stdin (s16le, {SAMPLE_RATE} Hz, mono)"
        self.rate = float(self.format.rate)
        self.channels = self.format.channels
        self.live = False
        self.block_bytes = self.format.frame_bytes * max(1, int(round(block_seconds * self.rate)))
        self.overflows = 0

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        carry, frame = self._pending, self.format.frame_bytes
        while True:
            data = self._stream.read(self.block_bytes)
            if not data:
                break
            data = carry + data
            usable = len(data) - len(data) % frame
            carry = data[usable:]
            if usable:
                yield self.format.decode(data[:usable]), time.monotonic()
        if carry:
            log.warning("stdin ended inside a sample frame (%d byte(s) of %d); the last %d byte(s) are ignored",
                        len(carry), frame, len(carry))

    def close(self) -> None:
        pass


class MicrophoneSource:
    """An input device through ``sounddevice.InputStream`` in callback mode, at its own rate.

    The callback only copies into a :class:`BlockRing` and counts PortAudio's overflow flags.
    Virtual ALSA devices (``default``, ``pulse``) claim 32 channels; at most two are opened.
    """

    def __init__(self, device: str | int | InputDevice | None = None, *, ring_seconds: float = RING_SECONDS):
        from .buffer import BlockRing

        self._sd = import_sounddevice()
        self.device = device if isinstance(device, InputDevice) else resolve_device(device)
        self.rate = float(self.device.samplerate)
        self.channels = max(1, min(self.device.channels, 2))
        self.live = True
        self.name = f"{self.device.name} ({self.rate:g} Hz, {self.channels} ch)"
        self.ring = BlockRing(int(ring_seconds * self.rate), self.channels)
        self.input_overflows = 0  # PortAudio's input_overflow flags
        self._stream = None
        self._restarted = False  # PortAudio restarted under this stream (see devices.restart_portaudio)
        self._lock = threading.Lock()  # this stream's: polling it, closing it (a stalled close blocks only here)

    def _callback(self, indata, frames, time_info, status) -> None:
        if status.input_overflow:
            self.input_overflows += 1
        self.ring.write(indata)

    @property
    def overflows(self) -> int:
        """Input overflows: flagged by PortAudio, or blocks the ring had no room for."""
        return self.input_overflows + self.ring.overflows

    def blocks(self) -> Iterator[tuple[np.ndarray, float]]:
        sd = self._sd
        with devices.STREAM_LOCK:
            try:
                self._stream = sd.InputStream(device=self.device.index, samplerate=self.rate, channels=self.channels,
                                              dtype="float32", callback=self._callback)
                self._stream.start()
            except (sd.PortAudioError, ValueError) as e:
                self._stream = None
                raise AudioDeviceError(f"cannot open input device {self.device.describe()}: {e}") from e
            devices.opened(self, self._close_for_restart)
        log.info("listening on %s", self.name)
        try:
            while True:
                block, stamp = self.ring.read(timeout=0.02)
                if len(block):
                    yield block, stamp
                    continue
                with self._lock:  # a restart or close() may have closed the stream: never poll a freed one
                    if self._restarted:
                        raise AudioDeviceError(f"input device {self.device.name!r} closed: PortAudio restarted "
                                               "to find another device")
                    if self._stream is None:
                        raise AudioDeviceError(f"input device {self.device.name!r} closed")
                    if not self._stream.active:
                        raise AudioDeviceError(f"input device {self.device.name!r} stopped delivering audio")
        finally:
            self.close()

    def _close_for_restart(self) -> None:
        self._restarted = True
        self.close()

    def close(self) -> None:
        # this stream's lock while PortAudio closes it, then the devices' lock (never both: a restart holds
        # the devices' lock and waits for this one)
        with self._lock:
            stream, self._stream = self._stream, None
            if stream is not None:
                stream.abort()  # not stop(): that waits for a stalled device's audio thread
                stream.close()
        with devices.STREAM_LOCK:
            devices.closed(self)
