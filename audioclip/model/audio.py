"""Checks and conversions at the audio boundary of the model (the checks are :mod:`.waveform`'s, shared with ONNX)."""

from __future__ import annotations

import numpy as np
import torch

from .constants import INT16_SCALE
from .waveform import NOT_FINITE, batch_shape, check_waveform, dtype_error


def as_waveform_batch(waveform) -> torch.Tensor:
    """Validate a waveform and return it as float32 ``[B, C, T]`` in [-1, 1].

    Accepts a torch tensor or numpy array shaped ``(T,)``, ``(B, T)`` or ``(B, C, T)``: float
    in [-1, 1], or int16 (scaled by 1/32768). Raises ``ValueError`` for other ranks or dtypes,
    non-finite samples, and signals shorter than one FBSP frame.
    """
    if isinstance(waveform, np.ndarray):
        return torch.from_numpy(check_waveform(waveform))
    if not isinstance(waveform, torch.Tensor):
        raise ValueError(f"waveform must be a torch tensor or numpy array, got {type(waveform).__name__}")
    if waveform.dtype == torch.int16:
        waveform = waveform.to(torch.float32) / INT16_SCALE
    elif not waveform.is_floating_point():
        raise dtype_error(waveform.dtype)
    waveform = waveform.reshape(batch_shape(waveform.shape)).to(torch.float32)
    if not torch.isfinite(waveform).all():
        raise ValueError(NOT_FINITE)
    return waveform
