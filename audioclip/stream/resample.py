"""Stateless signal helpers and the streaming resampler that brings any input to the model's rate."""

from __future__ import annotations

import numpy as np
import soxr

from ..model.constants import SAMPLE_RATE


def to_mono(block: np.ndarray) -> np.ndarray:
    """Average the channels of a ``(frames, channels)`` block; a 1-D block is returned as float32."""
    block = np.asarray(block)
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    if block.ndim != 2:
        raise ValueError(f"audio block must be (frames,) or (frames, channels), got {block.shape}")
    if block.shape[1] == 1:
        return block[:, 0].astype(np.float32, copy=False)
    return block.mean(axis=1, dtype=np.float32)


class StreamResampler:
    """Resamples a mono float32 stream in blocks to 44.1 kHz with soxr's ``ResampleStream``.

    Blocks in, blocks out: the concatenated output equals resampling the whole signal at once
    (the filter delay is absorbed: output starts late and :meth:`flush` returns the tail). At
    44.1 kHz it passes samples through untouched. Quality ``VHQ``: the audio head's dB spectrogram
    reaches 22 kHz and reacts to how the filter treats the band above its 20.1 kHz passband.
    """

    def __init__(self, in_rate: float, out_rate: int = SAMPLE_RATE, quality: str = "VHQ"):
        if not in_rate > 0:
            raise ValueError(f"input sample rate must be positive, got {in_rate}")
        self.in_rate, self.out_rate = float(in_rate), int(out_rate)
        self._stream = None
        if self.in_rate != self.out_rate:
            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32", quality=quality)

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def process(self, block: np.ndarray) -> np.ndarray:
        block = np.ascontiguousarray(block, dtype=np.float32)
        if self._stream is None:
            return block
        return self._stream.resample_chunk(block)

    def flush(self) -> np.ndarray:
        """The samples still held in the filter; call once, at the end of the input."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
