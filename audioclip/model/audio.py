"""Checks and conversions at the audio boundary of the model."""

from __future__ import annotations

import numpy as np
import torch

from .constants import FRAME_LENGTH, INT16_SCALE


def as_waveform_batch(waveform) -> torch.Tensor:
    """Validate a waveform and return it as float32 ``[B, C, T]`` in [-1, 1].

    Accepts a torch tensor or numpy array shaped ``(T,)``, ``(B, T)`` or ``(B, C, T)``: float
    in [-1, 1], or int16 (scaled by 1/32768). Raises ``ValueError`` for other ranks or dtypes,
    non-finite samples, and signals shorter than one FBSP frame.
    """
    if isinstance(waveform, np.ndarray):
        if waveform.dtype == np.int16:
            waveform = waveform.astype(np.float32) / INT16_SCALE
        elif not np.issubdtype(waveform.dtype, np.floating):
            raise ValueError(f"waveform must be float in [-1, 1] or int16, got numpy dtype {waveform.dtype}")
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    elif isinstance(waveform, torch.Tensor):
        if waveform.dtype == torch.int16:
            waveform = waveform.to(torch.float32) / INT16_SCALE
        elif not waveform.is_floating_point():
            raise ValueError(f"waveform must be float in [-1, 1] or int16, got torch dtype {waveform.dtype}")
    else:
        raise ValueError(f"waveform must be a torch tensor or numpy array, got {type(waveform).__name__}")
    if waveform.ndim == 1:
        waveform = waveform[None, None]
    elif waveform.ndim == 2:
        waveform = waveform[:, None]
    elif waveform.ndim != 3:
        raise ValueError(f"waveform must be shaped (T,), (B, T) or (B, C, T), got {tuple(waveform.shape)}")
    if waveform.shape[0] == 0 or waveform.shape[1] == 0:
        raise ValueError(f"waveform has an empty batch or channel axis: {tuple(waveform.shape)}")
    if waveform.shape[-1] < FRAME_LENGTH:
        raise ValueError(
            f"waveform has {waveform.shape[-1]} samples, fewer than one FBSP frame ({FRAME_LENGTH} samples "
            f"= {FRAME_LENGTH / 44100 * 1000:.1f} ms at 44.1 kHz); pad or pass longer audio")
    waveform = waveform.to(torch.float32)
    if not torch.isfinite(waveform).all():
        raise ValueError("waveform contains NaN or infinite samples; clean the input before encoding")
    return waveform
