"""A WAV file read from a pipe: the RIFF header parsed as it arrives, the samples decoded block by block.

``soundfile`` needs a seekable file; a pipe (``ffmpeg ... -f wav - | audioclip-stream --input -``)
is not, and a WAV written to a pipe often leaves its sizes at 0 or 0xFFFFFFFF because the writer
could not go back to fill them in. So the ``data`` chunk is read until the stream ends.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..audio import AudioFileError

PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE


@dataclass(frozen=True)
class WavFormat:
    """What the ``fmt `` chunk says: sample rate, channels, and the sample encoding (``dtype``)."""

    rate: int
    channels: int
    dtype: str  # numpy dtype of one sample: "u1", "<i2", "<i3" (24-bit, decoded by hand), "<i4", "<f4", "<f8"

    @property
    def frame_bytes(self) -> int:
        return self.channels * (3 if self.dtype == "<i3" else np.dtype(self.dtype).itemsize)

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of ``data`` as float32 ``(frames, channels)`` in [-1, 1]."""
        if self.dtype == "<i3":
            raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
            samples = (raw[:, 0] << 8 | raw[:, 1] << 16 | raw[:, 2] << 24).astype(np.float32) / 2.0 ** 31
        elif self.dtype == "u1":
            samples = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif self.dtype in ("<i2", "<i4"):
            bits = 8 * np.dtype(self.dtype).itemsize
            samples = np.frombuffer(data, self.dtype).astype(np.float32) / 2.0 ** (bits - 1)
        else:
            samples = np.frombuffer(data, self.dtype).astype(np.float32)
        return samples.reshape(-1, self.channels)


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_wav_header(stream: BinaryIO, riff: bytes = b"") -> WavFormat:
    """Read a WAV header from ``stream`` up to the first byte of its samples.

    ``riff``: bytes already read from the stream's start (a caller that sniffed ``RIFF``). Raises
    :class:`~audioclip.audio.AudioFileError` for a truncated header or an encoding other than
    8/16/24/32-bit PCM or 32/64-bit float.
    """
    head = riff + _read_exactly(stream, 12 - len(riff))
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise AudioFileError("stdin: starts with RIFF but is not a WAV file")
    fmt = None
    while True:
        chunk = _read_exactly(stream, 8)
        if len(chunk) < 8:
            raise AudioFileError("stdin: the WAV header ended before its data chunk")
        kind, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if kind == b"data":
            if fmt is None:
                raise AudioFileError("stdin: a WAV data chunk before its fmt chunk")
            return fmt
        body = _read_exactly(stream, size + size % 2)  # chunks are padded to an even size
        if kind == b"fmt ":
            fmt = _parse_fmt(body[:size])


def _parse_fmt(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise AudioFileError("stdin: a WAV fmt chunk shorter than 16 bytes")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # the sub-format GUID starts with the format tag
    dtypes = {(PCM, 8): "u1", (PCM, 16): "<i2", (PCM, 24): "<i3", (PCM, 32): "<i4", (FLOAT, 32): "<f4",
              (FLOAT, 64): "<f8"}
    if (tag, bits) not in dtypes or channels < 1 or rate < 1:
        raise AudioFileError(f"stdin: WAV format {tag:#x} with {bits}-bit samples, {channels} channel(s) at {rate} Hz "
                             f"is not supported: convert it to 16-bit PCM (ffmpeg -i IN -c:a pcm_s16le -f wav -)")
    return WavFormat(rate, channels, dtypes[tag, bits])
