"""Per-sample waveform augmentations of the paper's recipe, each a pure function of its input and a generator.

Nothing here mutates its input or touches global random state: a sample's randomness comes from
``numpy.random.Generator`` seeded by ``(seed, epoch, index)``, so results do not depend on batch
composition, worker count or where a run was resumed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sample_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return np.random.default_rng((seed, epoch, index))


def time_scale(x: np.ndarray, factor: float) -> np.ndarray:
    """Resample by linear interpolation to ``int(len(x) * factor)`` samples (pitch and tempo change together)."""
    n = len(x)
    out_len = max(int(n * factor), 1)
    ref = np.arange(out_len, dtype=np.float64) / factor
    lo = np.minimum(np.floor(ref).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = (ref - lo).astype(np.float32)
    return (x[lo] * (1.0 - frac) + x[hi] * frac).astype(np.float32)


def crop_or_pad(x: np.ndarray, length: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Exactly ``length`` samples: a crop or zero padding at a random offset (``rng``), else centred."""
    n = len(x)
    if n == length:
        return x.copy()
    span = abs(n - length)
    offset = int(rng.integers(0, span + 1)) if rng is not None else span // 2
    if n > length:
        return x[offset:offset + length].copy()
    out = np.zeros(length, dtype=np.float32)
    out[offset:offset + n] = x
    return out


def add_white_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``x`` plus Gaussian noise whose power is the signal's power less ``snr_db`` dB (silence stays silent)."""
    power = float(np.mean(np.square(x, dtype=np.float64)))
    if power == 0.0:
        return x.copy()
    noise_std = np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (x + rng.normal(0.0, noise_std, size=x.shape)).astype(np.float32)


@dataclass(frozen=True)
class Augmentation:
    """The recipe's training augmentations, applied in the reference's order.

    Time inversion with ``flip_p``; time scaling by ``max_scale ** U(-1, 1)``; a random crop or
    zero padding to the clip length; white noise at SNR ``U(*snr_db)`` dB with ``noise_p``.
    """

    max_scale: float = 1.5
    flip_p: float = 0.5
    noise_p: float = 0.25
    snr_db: tuple[float, float] = (10.0, 120.0)

    def __call__(self, x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
        # Every draw happens whether or not it is used, so one choice never shifts the others.
        flip = rng.random() < self.flip_p
        factor = self.max_scale ** rng.uniform(-1.0, 1.0)
        noisy = rng.random() < self.noise_p
        snr = rng.uniform(*self.snr_db)
        y = x[::-1] if flip else x
        y = time_scale(y, factor)
        y = crop_or_pad(y, length, rng)
        return add_white_noise(y, snr, rng) if noisy else y
