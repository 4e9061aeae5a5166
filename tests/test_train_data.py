"""Training data: decoding any format, the US8K / ESC-50 / folder layouts and folds, the cache, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audioclip.audio import AudioFileError, load_audio
from audioclip.model import SAMPLE_RATE
from audioclip.training.audio_io import DecodeCache
from audioclip.training.datasets import DatasetError, load_dataset
from audioclip.training.loader import ClipDataset, prepare_clips

from helpers import FORMATS, make_esc50, make_folder, make_us8k, write_clip


@pytest.fixture(scope="module")
def us8k(tmp_path_factory) -> Path:
    return make_us8k(tmp_path_factory.mktemp("us8k"))


@pytest.mark.parametrize("rate,subtype,channels", FORMATS + [(32000, "PCM_16", 1)])
def test_decode_any_format_gives_44k1_mono_float(tmp_path, rate, subtype, channels):
    t = np.arange(int(0.5 * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    write_clip(tmp_path / "a.wav", x, rate, subtype, channels)
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 0.5 * SAMPLE_RATE) <= 2
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(y) - 1000.0) < 5.0  # same pitch after resampling
    tol = 0.02 if subtype == "PCM_U8" else 0.005
    assert abs(np.abs(y[len(y) // 4: 3 * len(y) // 4]).max() - 0.5) < tol  # same level, channels averaged


def test_decode_corrupt_and_missing_files_raise_with_the_path(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioFileError, match="bad.wav"):
        load_audio(bad)
    with pytest.raises(AudioFileError, match="absent.wav"):
        load_audio(tmp_path / "absent.wav")


def test_esc50_layout_labels_and_folds(esc50):
    data = load_dataset("esc50", esc50)
    assert data.labels == ["synthetic tone", "synthetic chirp", "synthetic noise", "synthetic clicks"]
    assert data.folds == 5 and data.clip_samples == 5 * SAMPLE_RATE and len(data.clips) == 80
    train, test = data.split(3)
    assert {c.fold for c in test} == {3} and len(test) == 16
    assert 3 not in {c.fold for c in train} and len(train) == 64
    assert all(c.path.name.endswith(f"-{c.label}.wav") for c in data.clips)


def test_us8k_layout_labels_ordered_by_class_id_and_ten_folds(us8k):
    data = load_dataset("us8k", us8k)
    assert data.labels == ["air conditioner", "car horn", "dog bark", "street music"]
    assert data.folds == 10 and data.clip_samples == 4 * SAMPLE_RATE
    assert all(c.path.parent.name == f"fold{c.fold}" for c in data.clips)
    dog = data.labels.index("dog bark")
    assert all(int(c.path.name.split("-")[1]) == 3 for c in data.clips if c.label == dog)
    train, test = data.split(10)
    assert len(test) == 4 and len(train) == 36


def test_folder_split_is_stratified_seeded_and_train_test_dirs_win(tmp_path):
    make_folder(tmp_path / "f")
    a, b = load_dataset("folder", tmp_path / "f", seed=0), load_dataset("folder", tmp_path / "f", seed=0)
    assert a.labels == ["my chirp", "my clicks", "my noise", "my tone"] and a.folds == 5
    assert a.clips == b.clips
    assert a.clips != load_dataset("folder", tmp_path / "f", seed=1).clips
    for fold in range(1, 6):  # 5 files per class over 5 folds: one of each class per fold
        assert sorted(c.label for c in a.clips if c.fold == fold) == [0, 1, 2, 3]
    make_folder(tmp_path / "g" / "train", per_class=3)
    make_folder(tmp_path / "g" / "test", per_class=1)
    split = load_dataset("folder", tmp_path / "g")
    train, test = split.split(1)
    assert split.folds == 1 and len(train) == 12 and len(test) == 4
    assert all(c.path.parent.parent.name == "test" for c in test)


def test_cache_decodes_each_clip_once(esc50, tmp_path, monkeypatch):
    from audioclip.training import audio_io

    data = load_dataset("esc50", esc50, clip_seconds=1.0)
    calls = []
    real = audio_io.load_audio
    monkeypatch.setattr(audio_io, "load_audio", lambda p: calls.append(p) or real(p))
    cache = DecodeCache(tmp_path / "cache")
    kept = prepare_clips(data.clips, cache)
    assert len(kept) == 80 and len(calls) == 80 and len(list((tmp_path / "cache").glob("*.npy"))) == 80
    dataset = ClipDataset(kept, cache, data.clip_samples)
    first = [dataset[i][0] for i in range(len(dataset))]
    second = [dataset[i][0] for i in range(len(dataset))]  # a later epoch
    assert len(calls) == 80
    assert all((a == b).all() for a, b in zip(first, second))
    direct = DecodeCache(None)
    np.testing.assert_array_equal(direct.load(kept[0].path), cache.load(kept[0].path))
    assert len(calls) == 81  # without a cache every load decodes


def test_corrupt_clips_are_skipped_counted_and_fail_above_the_share(esc50, tmp_path, caplog):
    root = tmp_path / "esc"
    make_esc50(root, per_class_per_fold=1)
    (root / "audio" / "1-1000-A-0.wav").write_bytes(b"not audio at all")
    data = load_dataset("esc50", root)
    kept = prepare_clips(data.clips, DecodeCache(tmp_path / "c1"), max_bad_share=0.1)
    assert len(kept) == 19 and all(c.path.name != "1-1000-A-0.wav" for c in kept)
    assert "skipped 1 of 20" in caplog.text and "1-1000-A-0.wav" in caplog.text
    with pytest.raises(DatasetError, match=r"1 of 20 clips \(5.0%\) cannot be decoded"):
        prepare_clips(data.clips, DecodeCache(tmp_path / "c2"), max_bad_share=0.01)


def test_bad_layouts_give_one_line_errors(tmp_path, esc50):
    cases = []
    with pytest.raises(DatasetError, match="data root not found") as e:
        load_dataset("esc50", tmp_path / "nowhere")
    cases.append(e)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=r"meta/esc50.csv: metadata file not found") as e:
        load_dataset("esc50", tmp_path / "empty")
    cases.append(e)
    root = tmp_path / "noaudio"
    make_esc50(root, per_class_per_fold=1)
    for f in (root / "audio").iterdir():
        f.unlink()
    (root / "audio").rmdir()
    with pytest.raises(DatasetError, match="audio folder not found") as e:
        load_dataset("esc50", root)
    cases.append(e)
    root = tmp_path / "absent"
    make_esc50(root, per_class_per_fold=1)
    (root / "audio" / "2-1004-A-0.wav").unlink()
    (root / "audio" / "5-1019-A-3.wav").unlink()
    with pytest.raises(DatasetError, match=r"2 of 20 listed files are absent, e.g. .*2-1004-A-0.wav and 1 more") as e:
        load_dataset("esc50", root)
    cases.append(e)
    with pytest.raises(DatasetError, match=r"fold 6 is out of range: esc50 has folds 1..5") as e:
        load_dataset("esc50", esc50).split(6)
    cases.append(e)
    make_folder(tmp_path / "f", per_class=2)
    (tmp_path / "f" / "silence").mkdir()
    with pytest.raises(DatasetError, match="class 'silence' has no audio files") as e:
        load_dataset("folder", tmp_path / "f")
    cases.append(e)
    assert all("\n" not in str(c.value) for c in cases)
