"""The waveform checks both backends share (PyTorch's ``encode_audio``, ONNX Runtime's ``OnnxClassifier``)."""

from __future__ import annotations

import numpy as np

from .constants import FRAME_LENGTH, INT16_SCALE, SAMPLE_RATE

NOT_FINITE = "waveform contains NaN or infinite samples; clean the input before encoding"


def dtype_error(dtype) -> ValueError:
    return ValueError(f"waveform must be float in [-1, 1] or int16, got dtype {dtype}")


def batch_shape(shape: tuple[int, ...], *, min_samples: int = FRAME_LENGTH,
                needs: str = "one FBSP frame") -> tuple[int, int, int]:
    """The ``(B, C, T)`` a waveform shaped ``(T,)``, ``(B, T)`` or ``(B, C, T)`` is read as.

    Raises ``ValueError`` for other ranks, an empty batch or channel axis, and fewer than
    ``min_samples`` samples (``needs`` says what those samples are, e.g. ``"this graph takes"``).
    """
    shape = tuple(shape)
    if len(shape) == 1:
        shape = (1, 1, *shape)
    elif len(shape) == 2:
        shape = (shape[0], 1, shape[1])
    elif len(shape) != 3:
        raise ValueError(f"waveform must be shaped (T,), (B, T) or (B, C, T), got {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"waveform has an empty batch or channel axis: {shape}")
    if shape[2] < min_samples:
        raise ValueError(f"waveform has {shape[2]} samples, fewer than {needs} ({min_samples} samples = "
                         f"{min_samples / SAMPLE_RATE:.4f} s at {SAMPLE_RATE} Hz); pad or pass longer audio")
    return shape


def check_waveform(waveform, *, min_samples: int = FRAME_LENGTH, needs: str = "one FBSP frame") -> np.ndarray:
    """Validate a numpy waveform; return it as C-contiguous float32 ``[B, C, T]``.

    Float input is taken as it is ([-1, 1] is the contract); int16 is divided by ``INT16_SCALE``.
    Raises ``ValueError`` for other dtypes, the shapes :func:`batch_shape` refuses, and NaN or
    infinite samples.
    """
    waveform = np.asarray(waveform)
    if waveform.dtype == np.int16:
        waveform = waveform.astype(np.float32) / np.float32(INT16_SCALE)
    elif not np.issubdtype(waveform.dtype, np.floating):
        raise dtype_error(waveform.dtype)
    shape = batch_shape(waveform.shape, min_samples=min_samples, needs=needs)
    waveform = np.ascontiguousarray(waveform.reshape(shape), dtype=np.float32)
    if not np.isfinite(waveform).all():
        raise ValueError(NOT_FINITE)
    return waveform
