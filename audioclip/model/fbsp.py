"""The FBSP front end: framing, the learned complex B-spline transform, power and dB.

The reference (``LinearFBSP``) rebuilds its 1025 x 2048 complex weights from the parameters
``m``, ``fb`` and ``fc`` on every call and frames the signal with an index gather. Here the
weights are built by the same formula (bit-exact) and cached by the audio head while its
parameters are unchanged, the frames are a strided view, and the transform is one matrix
product over the 1023 bins the band split keeps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .constants import BAND_HEIGHT, FRAME_LENGTH, HOP_LENGTH, LOG10_FLOOR, N_BANDS, N_BINS, N_FFT
from .frames import frame_count, frame_padding  # noqa: F401 (part of this module's interface)

_EPS = 1e-8


def blackman_harris_window(length: int = FRAME_LENGTH) -> torch.Tensor:
    """The periodic 4-term Blackman-Harris window (scipy's ``get_window('blackmanharris', fftbins=True)``)."""
    a = (0.35875, 0.48829, 0.14128, 0.01168)
    n = np.arange(length, dtype=np.float64)
    phase = 2.0 * np.pi * n / length
    w = a[0] - a[1] * np.cos(phase) + a[2] * np.cos(2 * phase) - a[3] * np.cos(3 * phase)
    return torch.from_numpy(w).to(torch.float32)


def _complex_power(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """``base ** exponent`` for complex numbers stored as ``[..., 2]`` (real, imaginary), as the reference."""
    magnitude_sq = base[..., 0] ** 2 + base[..., 1] ** 2
    phase = base[..., 1].atan2(base[..., 0])
    p_re, p_im = exponent[..., 0], exponent[..., 1]
    modulus = magnitude_sq ** (0.5 * p_re) * torch.exp(-p_im * phase)
    angle = p_re * phase + 0.5 * p_im * magnitude_sq.log()
    return modulus.unsqueeze(-1) * torch.stack((angle.cos(), angle.sin()), dim=-1)


def _sinc(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x == 0, torch.ones_like(x), torch.sin(x) / x)


class LinearFBSP(nn.Module):
    """The learned frequency B-spline transform's parameters (state-dict names of the reference)."""

    def __init__(self, out_features: int = N_BINS, normalized: bool = True):
        super().__init__()
        self.out_features = out_features
        self.normalized = normalized
        self.m = nn.Parameter(torch.zeros(out_features))
        self.fb = nn.Parameter(torch.ones(out_features))
        self.fc = nn.Parameter(torch.arange(out_features, dtype=torch.float32))
        # The reference registers a bias of shape [0] when it has none; keep the key.
        self.bias = nn.Parameter(torch.zeros(0), requires_grad=False)

    def weights(self, in_features: int = N_FFT) -> torch.Tensor:
        """Complex weights ``[out_features, in_features, 2]`` by the reference's formula."""
        dtype, device = self.m.dtype, self.m.device
        t = math.pi * torch.linspace(-1.0, 1.0, in_features, dtype=dtype, device=device).reshape(1, -1, 1) + _EPS
        m = self.m.reshape(-1, 1, 1)
        fb = self.fb.reshape(-1, 1, 1)
        fc = self.fc.reshape(-1, 1, 1)
        kernel = torch.cat((torch.cos(fc * t), -torch.sin(fc * t)), dim=-1)
        scale = fb.sqrt()
        win = _sinc(fb * t / (m + _EPS))
        win = _complex_power(torch.cat((win, torch.zeros_like(win)), dim=-1),
                             torch.cat((m, torch.zeros_like(m)), dim=-1))
        weights = scale * torch.cat((
            win[..., :1] * kernel[..., :1] - win[..., 1:] * kernel[..., 1:],
            win[..., :1] * kernel[..., 1:] + win[..., 1:] * kernel[..., :1],
        ), dim=-1)
        if self.normalized:
            weights = weights / (in_features ** 0.5)
        return weights


def fbsp_kernel(weights: torch.Tensor) -> torch.Tensor:
    """Transform matrix ``[2 * 1023, N_FFT]`` from complex weights ``[1025, N_FFT, 2]``.

    Real rows of the kept bins, then imaginary rows: the two bins the band split drops are
    never computed.
    """
    kept = N_BANDS * BAND_HEIGHT
    return torch.cat((weights[:kept, :, 0], weights[:kept, :, 1]), dim=0)


def power_spectrogram(x: torch.Tensor, kernel: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Power ``[N, 1023, frames]`` of waveforms ``x`` ``[N, T]`` (reference scale), framed as the reference frames.

    The frames are a strided view (no gather), windowed and zero padded to ``N_FFT`` as in the
    reference, so that one matrix product gives the reference's values bit for bit on the same
    BLAS: folding the window into the kernel or dropping the padding columns changes the
    summation order, and quiet bins (below -100 dB) then move by up to 0.03 dB and embeddings by
    1e-3 relative.
    """
    left, right = frame_padding(x.shape[-1])
    frames = F.pad(x, (left, right)).unfold(-1, FRAME_LENGTH, HOP_LENGTH) * window  # [N, frames, FRAME_LENGTH]
    pad = (N_FFT - FRAME_LENGTH) // 2
    frames = F.pad(frames, (pad, N_FFT - FRAME_LENGTH - pad))
    spec = F.linear(frames, kernel)  # [N, frames, 2 * 1023]
    re, im = spec.transpose(1, 2).chunk(2, dim=1)
    return re * re + im * im


def power_to_db(power: torch.Tensor) -> torch.Tensor:
    """``10 log10`` of power ``[N, 1023, frames]`` with the reference's floor, in bands ``[N, 3, 341, frames]``."""
    power = torch.where(power > 0.0, power, torch.full_like(power, LOG10_FLOOR))
    db = torch.log10(power).mul(10.0)
    return db.reshape(db.shape[0], N_BANDS, BAND_HEIGHT, db.shape[-1])
