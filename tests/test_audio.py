"""The audio contract: one decoder, one resampling quality for files and streams, one check for both backends."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import audioclip
from audioclip import audio
from audioclip.audio import RESAMPLE_QUALITY, SAMPLE_RATE, AudioFileError, load_audio, resample
from audioclip.files import atomic_write, atomic_write_text
from audioclip.stream.resample import StreamResampler, to_mono
from audioclip.training.audio_io import DecodeCache

FILTER_DELAY = 64
"""Output samples at the start where a stream's resampler may still differ from resampling the whole signal."""


def stereo_48k(path, seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    """A 48 kHz stereo file with energy up to 24 kHz (noise, a chirp to 23 kHz, clicks); returns its samples."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 48000)
    t = np.arange(n) / 48000
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t + (23000 - 200) / (2 * seconds) * t ** 2))
    clicks = np.zeros(n)
    clicks[rng.integers(0, n, 40)] = 0.8
    left = chirp + 0.1 * rng.standard_normal(n) + clicks
    right = 0.5 * chirp + 0.2 * rng.standard_normal(n)
    x = np.stack([left, right], axis=1).clip(-1, 1).astype(np.float32)
    sf.write(path, x, 48000, subtype="FLOAT")
    return x


def streamed(x: np.ndarray, rate: int, block: int) -> np.ndarray:
    """``x`` ``(frames, channels)`` through the stream's path: mono per block, resampled in blocks, flushed."""
    resampler = StreamResampler(rate)
    pieces = [resampler.process(to_mono(x[i:i + block])) for i in range(0, len(x), block)]
    return np.concatenate([*pieces, resampler.flush()])


@pytest.mark.parametrize("block", [2400, 1000, 4096])
def test_training_decode_equals_the_stream_of_the_same_48k_stereo_file(tmp_path, block):
    x = stereo_48k(tmp_path / "a.wav")
    cache = DecodeCache(tmp_path / "cache")
    decoded = cache.load(tmp_path / "a.wav")
    stream = streamed(x, 48000, block)
    assert decoded.dtype == np.float32 and len(decoded) == len(stream) == 3 * SAMPLE_RATE
    assert np.abs(decoded[FILTER_DELAY:] - stream[FILTER_DELAY:]).max() <= 1e-5
    np.testing.assert_array_equal(cache.load(tmp_path / "a.wav"), decoded)  # served from the cache: the same
    # the old training path (soxr HQ on the whole file) is measurably elsewhere in the top octave
    old = soxr.resample(x.mean(axis=1, dtype=np.float64), 48000, SAMPLE_RATE, quality="HQ")
    assert np.abs(old[FILTER_DELAY:] - stream[FILTER_DELAY:]).max() > 1e-3


def test_load_audio_is_mono_float32_at_the_model_rate(tmp_path):
    x = stereo_48k(tmp_path / "a.wav", seconds=1.0)
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.shape == (SAMPLE_RATE,)
    np.testing.assert_allclose(y, soxr.resample(x.mean(axis=1), 48000, SAMPLE_RATE, quality="VHQ"), atol=1e-6)
    at_rate = (0.25 * np.sin(np.arange(5000) / 7)).astype(np.float32)
    sf.write(tmp_path / "b.flac", np.stack([at_rate, at_rate], 1), SAMPLE_RATE, subtype="PCM_24")
    np.testing.assert_allclose(load_audio(tmp_path / "b.flac"), at_rate, atol=2 ** -22)  # no resampling at 44.1 kHz
    assert audioclip.load_audio is load_audio and RESAMPLE_QUALITY == "VHQ"


def test_whole_signal_resampling_matches_the_stream_at_any_rate():
    rng = np.random.default_rng(1)
    for rate in (8000, 22050, 32000, 96000):
        x = (0.3 * rng.standard_normal((rate, 1))).astype(np.float32)
        whole = resample(x[:, 0], rate)
        assert len(whole) == SAMPLE_RATE
        assert np.abs(whole[FILTER_DELAY:] - streamed(x, rate, 777)[FILTER_DELAY:]).max() <= 1e-5
    x = rng.standard_normal(100).astype(np.float32)
    assert resample(x, SAMPLE_RATE) is not None and np.array_equal(resample(x, SAMPLE_RATE), x)
    with pytest.raises(ValueError, match="sample rate must be positive"):
        resample(x, 0)


def test_bad_files_raise_the_one_audio_file_error_naming_the_file(tmp_path):
    from audioclip.stream import sources
    from audioclip.training import loader

    assert sources.AudioFileError is loader.AudioFileError is AudioFileError and issubclass(AudioFileError, ValueError)
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 48000)
    sf.write(tmp_path / "nan.wav", np.full((100, 1), np.nan, np.float32), 48000, subtype="FLOAT")
    for name, what in (("absent.wav", "no such audio file"), ("text.wav", "not an audio file libsndfile can read"),
                       ("empty.wav", "holds no samples"), ("nan.wav", "holds NaN or infinite samples")):
        with pytest.raises(AudioFileError) as info:
            load_audio(tmp_path / name)
        assert str(info.value).startswith(f"{tmp_path / name}: {what}") and "\n" not in str(info.value)
    with pytest.raises(AudioFileError, match="text.wav: not an audio file"):
        sources.FileSource(tmp_path / "text.wav")


def test_cache_entries_of_the_old_decoder_are_not_served(tmp_path):
    """Entries written before the one-quality change (soxr HQ, keyed by path, size and mtime) are decoded again."""
    stereo_48k(tmp_path / "a.wav", seconds=0.5)
    path = tmp_path / "a.wav"
    stat = path.stat()
    old_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    stale = np.full(10, 0.5, np.float32)
    np.save(cache_dir / f"{hashlib.sha1(old_key).hexdigest()}.npy", stale)
    got = DecodeCache(cache_dir).load(path)
    np.testing.assert_array_equal(got, load_audio(path))
    assert len(list(cache_dir.glob("*.npy"))) == 2  # the stale entry stays unread beside the new one


BAD_WAVEFORMS = [
    (np.zeros(5000, np.int32), "must be float in \\[-1, 1\\] or int16"),
    (np.zeros((1, 1, 1, 5000), np.float32), "must be shaped"),
    (np.zeros((0, 5000), np.float32), "empty batch or channel axis"),
    (np.r_[np.zeros(4000), np.nan].astype(np.float32), "NaN or infinite"),
]


@pytest.mark.parametrize("waveform,message", BAD_WAVEFORMS)
def test_both_backends_refuse_a_bad_waveform_with_the_same_words(waveform, message):
    from audioclip.export.runtime import as_mono_batch
    from audioclip.model.audio import as_waveform_batch

    for check in (as_waveform_batch, lambda w: as_mono_batch(w, min_samples=1654, window_samples=None)):
        with pytest.raises(ValueError, match=message):
            check(waveform)
    with pytest.raises(ValueError, match=message):
        as_waveform_batch(torch.from_numpy(waveform))


def test_both_backends_scale_int16_the_same_way():
    from audioclip.export.runtime import as_mono_batch
    from audioclip.model.audio import as_waveform_batch

    x = np.array([[-32768, -1, 0, 1, 16384, 32767] * 300], np.int16)
    onnx_side = as_mono_batch(x, min_samples=1654, window_samples=None)
    assert onnx_side.dtype == np.float32 and onnx_side[0, :6].tolist() == [-1.0, -1 / 32768, 0.0, 1 / 32768, 0.5,
                                                                          32767 / 32768]
    np.testing.assert_array_equal(as_waveform_batch(x)[:, 0].numpy(), onnx_side)
    np.testing.assert_array_equal(as_waveform_batch(torch.from_numpy(x))[:, 0].numpy(), onnx_side)
    with pytest.raises(ValueError, match="2 channels; the ONNX graphs take mono"):
        as_mono_batch(np.zeros((1, 2, 2000), np.float32), min_samples=1654, window_samples=None)


def test_the_contract_is_defined_once():
    from audioclip.export import runtime
    from audioclip.model import constants

    assert audio.SAMPLE_RATE is constants.SAMPLE_RATE and audio.INT16_SCALE is constants.INT16_SCALE
    assert not hasattr(runtime, "INT16_SCALE")


def test_a_durable_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "part.bin"
    atomic_write(path, lambda f: f.write(b"data"))
    assert [c[0] for c in calls] == ["fsync", "replace", "fsync"], calls
    assert calls[0][1].startswith(str(tmp_path / ".part.bin.")) and calls[2][1] == str(tmp_path)
    calls.clear()
    atomic_write(path, lambda f: f.write(b"cache"), durable=False)
    assert calls == [("replace", str(path))] and path.read_bytes() == b"cache"


def test_atomic_write_replaces_whole_files_only(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic_write_text(path, "one\n")

    def fails(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fails)
    assert path.read_text() == "one\n" and os.listdir(path.parent) == ["report.json"]
    old = os.umask(0o027)
    try:
        atomic_write_text(path, "two\n")
    finally:
        os.umask(old)
    assert path.read_text() == "two\n" and path.stat().st_mode & 0o777 == 0o640
