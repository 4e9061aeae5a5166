"""The audio contract in one place: the model's constants, file decoding, resampling and waveform checks.

Every path that brings audio to the model goes through here: training decodes files with
:func:`load_audio`, export verification reads its clips with it, and streaming resamples with the
same soxr quality (:data:`RESAMPLE_QUALITY`) block by block. Numpy, soundfile and soxr only: no torch.
"""

from __future__ import annotations

import os

import numpy as np

from .model.constants import FRAME_LENGTH, HOP_LENGTH, INT16_SCALE, N_FFT, SAMPLE_RATE, WINDOW_SECONDS
from .model.waveform import check_waveform

__all__ = ["AUDIO_EXTENSIONS", "AudioFileError", "FRAME_LENGTH", "HOP_LENGTH", "INT16_SCALE", "N_FFT",
           "RESAMPLE_QUALITY", "SAMPLE_RATE", "WINDOW_SECONDS", "check_waveform", "load_audio", "resample", "to_mono"]

RESAMPLE_QUALITY = "VHQ"
"""soxr quality of every resampling, whole files and streams alike.

The audio head's dB spectrogram reaches 22 kHz and reacts to how the filter treats the band above
its passband, so a head fine-tuned on one quality and streamed on another scores differently; with
one quality, a streamed file matches the file decoded whole.
"""

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
"""File name endings taken as audio when a folder is searched (all read by libsndfile)."""


class AudioFileError(ValueError):
    """An audio file is missing, unreadable, or holds no usable samples."""


def to_mono(block: np.ndarray) -> np.ndarray:
    """Average the channels of a ``(frames, channels)`` block to float32; a 1-D block is returned as float32."""
    block = np.asarray(block)
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    if block.ndim != 2:
        raise ValueError(f"audio block must be (frames,) or (frames, channels), got {block.shape}")
    if block.shape[1] == 1:
        return block[:, 0].astype(np.float32, copy=False)
    return block.mean(axis=1, dtype=np.float32)


def resample(x: np.ndarray, rate: float) -> np.ndarray:
    """A whole mono signal at ``rate`` Hz -> float32 at ``SAMPLE_RATE`` (soxr at :data:`RESAMPLE_QUALITY`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not rate > 0:
        raise ValueError(f"sample rate must be positive, got {rate}")
    if rate == SAMPLE_RATE:
        return x
    import soxr

    return soxr.resample(x, rate, SAMPLE_RATE, quality=RESAMPLE_QUALITY)


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Samples of an audio file as float32 mono at ``SAMPLE_RATE``: channels averaged, then resampled.

    Raises :class:`AudioFileError` naming the file when it is missing, cannot be decoded, is empty
    or holds NaN or infinite samples.
    """
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioFileError(f"{path}: no such audio file")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise AudioFileError(f"{path}: not an audio file libsndfile can read "
                             f"({str(e).strip() or type(e).__name__})") from e
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: holds no samples")
    mono = resample(to_mono(data), rate)
    if not np.isfinite(mono).all():
        raise AudioFileError(f"{path}: holds NaN or infinite samples")
    return mono
