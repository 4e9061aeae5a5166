"""The streaming resampler that brings any input to the model's rate, block by block (``to_mono`` is the contract's)."""

from __future__ import annotations

import numpy as np
import soxr

from ..audio import RESAMPLE_QUALITY, to_mono
from ..model.constants import SAMPLE_RATE

__all__ = ["StreamResampler", "to_mono"]


class StreamResampler:
    """Resamples a mono float32 stream in blocks to 44.1 kHz with soxr's ``ResampleStream``.

    Blocks in, blocks out: the concatenated output equals :func:`audioclip.audio.resample` of the
    whole signal (same quality, :data:`audioclip.audio.RESAMPLE_QUALITY`; the filter delay is
    absorbed: output starts late and :meth:`flush` returns the tail). At 44.1 kHz it passes
    samples through untouched.
    """

    def __init__(self, in_rate: float, out_rate: int = SAMPLE_RATE):
        if not in_rate > 0:
            raise ValueError(f"input sample rate must be positive, got {in_rate}")
        self.in_rate, self.out_rate = float(in_rate), int(out_rate)
        self._stream = None
        if self.in_rate != self.out_rate:
            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32",
                                               quality=RESAMPLE_QUALITY)

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
