"""Each augmentation of the recipe: its measured effect, seeding per sample, and no mutation or global state."""

from __future__ import annotations

import numpy as np
import pytest

from audioclip.training.augment import Augmentation, add_white_noise, crop_or_pad, sample_generator, time_scale


def tone(n: int = 44100, freq: float = 441.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / 44100)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    return np.argmax(np.abs(np.fft.rfft(x * np.hanning(len(x))))) * 44100 / len(x)


@pytest.mark.parametrize("factor", [1 / 1.5, 0.8, 1.0, 1.25, 1.5])
def test_time_scale_changes_duration_and_pitch_together(factor):
    x = tone()
    y = time_scale(x, factor)
    assert len(y) == int(len(x) * factor) and y.dtype == np.float32
    assert peak_hz(y) == pytest.approx(441.0 / factor, rel=0.01)  # resampling: pitch moves with tempo
    assert np.abs(y).max() <= 0.5 + 1e-6  # linear interpolation never overshoots


def test_crop_or_pad_random_offset_and_centre():
    x = np.arange(1, 11, dtype=np.float32)
    assert crop_or_pad(x, 6).tolist() == [3, 4, 5, 6, 7, 8]  # centred crop
    padded = crop_or_pad(x, 14)
    assert padded.tolist() == [0, 0] + list(range(1, 11)) + [0, 0]
    offsets = {int(crop_or_pad(x, 4, np.random.default_rng(s))[0]) - 1 for s in range(60)}
    assert offsets == set(range(7))  # every crop position is reachable
    starts = {int(np.flatnonzero(crop_or_pad(x, 13, np.random.default_rng(s)))[0]) for s in range(60)}
    assert starts == {0, 1, 2, 3}


@pytest.mark.parametrize("snr", [10.0, 30.0, 60.0])
def test_white_noise_has_the_asked_snr(snr):
    x = tone(200000)
    y = add_white_noise(x, snr, np.random.default_rng(0))
    noise = (y - x).astype(np.float64)
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise ** 2))
    assert measured == pytest.approx(snr, abs=0.1)
    assert abs(np.mean(noise)) < 3 * noise.std() / np.sqrt(len(noise))  # zero mean
    assert np.array_equal(add_white_noise(np.zeros(100, np.float32), snr, np.random.default_rng(0)), np.zeros(100))


def test_recipe_draws_each_augmentation_with_its_probability_and_range():
    aug = Augmentation()
    x = tone(44100)
    flips = noisy = 0
    lengths = []
    for i in range(400):
        rng = sample_generator(0, 0, i)
        flip, factor = rng.random() < 0.5, 1.5 ** rng.uniform(-1, 1)
        add_noise = rng.random() < 0.25
        lengths.append(len(time_scale(x, factor)))
        flips += flip
        noisy += add_noise
        y = aug(x, 44100, sample_generator(0, 0, i))
        assert len(y) == 44100 and y.dtype == np.float32
    assert 0.43 < flips / 400 < 0.57 and 0.19 < noisy / 400 < 0.31
    assert min(lengths) >= int(44100 / 1.5) and max(lengths) <= int(44100 * 1.5)
    assert min(lengths) < 0.72 * 44100 and max(lengths) > 1.4 * 44100


def test_flip_reverses_time():
    ramp = np.linspace(0, 0.9, 5000, dtype=np.float32)
    aug = Augmentation(max_scale=1.0, flip_p=1.0, noise_p=0.0)
    np.testing.assert_array_equal(aug(ramp, 5000, np.random.default_rng(0)), ramp[::-1])
    kept = Augmentation(max_scale=1.0, flip_p=0.0, noise_p=0.0)
    np.testing.assert_array_equal(kept(ramp, 5000, np.random.default_rng(0)), ramp)


def test_per_sample_seeding_no_mutation_no_global_random():
    aug = Augmentation()
    x = tone(30000)
    before = x.copy()
    np.random.seed(123)
    global_state = np.random.get_state()[1].copy()
    a = aug(x, 44100, sample_generator(7, 3, 11))
    b = aug(x, 44100, sample_generator(7, 3, 11))
    np.testing.assert_array_equal(a, b)  # a sample's augmentation depends on (seed, epoch, index) only
    assert not np.array_equal(a, aug(x, 44100, sample_generator(7, 4, 11)))  # another epoch differs
    assert not np.array_equal(a, aug(x, 44100, sample_generator(7, 3, 12)))  # another sample differs
    np.testing.assert_array_equal(x, before)  # input untouched
    assert np.array_equal(np.random.get_state()[1], global_state)  # global numpy RNG untouched
