"""Training data: decoding any format, the US8K / ESC-50 / folder layouts and folds, the cache, bad input.

Also holds the builders of the tiny synthetic data sets the other training tests use.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audioclip.model import SAMPLE_RATE
from audioclip.training.audio_io import AudioFileError, DecodeCache, decode_audio
from audioclip.training.datasets import DatasetError, load_dataset
from audioclip.training.loader import ClipDataset, prepare_clips

KINDS = ("tone", "chirp", "noise", "clicks")
# (rate, subtype, channels): US8K mixes 8-32 bit, 8-48 kHz, mono and stereo.
FORMATS = [(8000, "PCM_U8", 1), (22050, "PCM_16", 2), (44100, "PCM_24", 1), (48000, "FLOAT", 2), (16000, "PCM_32", 1)]


def synth(kind: str, rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    """A clip of one of four sound types with random parameters, peak 0.3-0.8."""
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        x = np.sin(2 * np.pi * rng.uniform(300, 1500) * t + rng.uniform(0, 2 * np.pi))
    elif kind == "chirp":
        f0, f1 = rng.uniform(200, 500), rng.uniform(2500, 3500)
        x = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    elif kind == "noise":
        x = rng.normal(0, 0.3, len(t))
    else:
        x = np.zeros(len(t))
        period = int(rate * rng.uniform(0.04, 0.1))
        x[rng.integers(0, period)::period] = 1.0
    return (x / max(np.abs(x).max(), 1e-9) * rng.uniform(0.3, 0.8)).astype(np.float32)


def write_clip(path: Path, x: np.ndarray, rate: int, subtype: str, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, data, rate, subtype=subtype)


def write_csv(path: Path, rows: list[dict]) -> None:
    """A metadata table in the data set's published column order (the rows' key order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def make_esc50(root: Path, per_class_per_fold: int = 2, seconds: float = 1.0, seed: int = 0) -> Path:
    """ESC-50 layout: ``meta/esc50.csv``, ``audio/<fold>-<id>-A-<target>.wav``; 4 classes, 5 folds."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for fold in range(1, 6):
        for target, kind in enumerate(KINDS):
            for _ in range(per_class_per_fold):
                rate, subtype, channels = FORMATS[n % len(FORMATS)]
                name = f"{fold}-{1000 + n}-A-{target}.wav"
                write_clip(root / "audio" / name, synth(kind, rng, seconds, rate), rate, subtype, channels)
                rows.append({"filename": name, "fold": fold, "target": target, "category": f"synthetic_{kind}",
                             "esc10": "False", "src_file": 1000 + n, "take": "A"})
                n += 1
    write_csv(root / "meta" / "esc50.csv", rows)
    return root


US8K_CLASSES = {3: "dog_bark", 1: "car_horn", 9: "street_music", 0: "air_conditioner"}


def make_us8k(root: Path, per_class_per_fold: int = 1, seconds: float = 1.0, seed: int = 1) -> Path:
    """UrbanSound8K layout: ``metadata/UrbanSound8K.csv``, ``audio/fold1..10``; 4 classes with sparse ids."""
    rng = np.random.default_rng(seed)
    rows, n = [], 0
    for fold in range(1, 11):
        for kind, (class_id, name) in zip(KINDS, US8K_CLASSES.items()):
            for _ in range(per_class_per_fold):
                rate, subtype, channels = FORMATS[n % len(FORMATS)]
                fname = f"{100 + n}-{class_id}-0-{n}.wav"
                path = root / "audio" / f"fold{fold}" / fname
                write_clip(path, synth(kind, rng, seconds, rate), rate, subtype, channels)
                rows.append({"slice_file_name": fname, "fsID": 100 + n, "start": 0.0, "end": seconds, "salience": 1,
                             "fold": fold, "classID": class_id, "class": name})
                n += 1
    write_csv(root / "metadata" / "UrbanSound8K.csv", rows)
    return root


def make_folder(root: Path, per_class: int = 5, seconds: float = 0.5, seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for i in range(per_class):
            write_clip(root / f"my_{kind}" / f"{i}.flac", synth(kind, rng, seconds, 16000), 16000, "PCM_16", 1)
    return root


@pytest.fixture(scope="module")
def esc50(tmp_path_factory) -> Path:
    return make_esc50(tmp_path_factory.mktemp("esc50"), per_class_per_fold=1)


@pytest.fixture(scope="module")
def us8k(tmp_path_factory) -> Path:
    return make_us8k(tmp_path_factory.mktemp("us8k"))


@pytest.mark.parametrize("rate,subtype,channels", FORMATS + [(32000, "PCM_16", 1)])
def test_decode_any_format_gives_44k1_mono_float(tmp_path, rate, subtype, channels):
    t = np.arange(int(0.5 * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    write_clip(tmp_path / "a.wav", x, rate, subtype, channels)
    y = decode_audio(tmp_path / "a.wav")
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
        decode_audio(bad)
    with pytest.raises(AudioFileError, match="absent.wav"):
        decode_audio(tmp_path / "absent.wav")


def test_esc50_layout_labels_and_folds(esc50):
    data = load_dataset("esc50", esc50)
    assert data.labels == ["synthetic tone", "synthetic chirp", "synthetic noise", "synthetic clicks"]
    assert data.folds == 5 and data.clip_samples == 5 * SAMPLE_RATE and len(data.clips) == 20
    train, test = data.split(3)
    assert {c.fold for c in test} == {3} and len(test) == 4
    assert 3 not in {c.fold for c in train} and len(train) == 16
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
    real = audio_io.decode_audio
    monkeypatch.setattr(audio_io, "decode_audio", lambda p: calls.append(p) or real(p))
    cache = DecodeCache(tmp_path / "cache")
    kept = prepare_clips(data.clips, cache)
    assert len(kept) == 20 and len(calls) == 20 and len(list((tmp_path / "cache").glob("*.npy"))) == 20
    dataset = ClipDataset(kept, cache, data.clip_samples)
    first = [dataset[i][0] for i in range(len(dataset))]
    second = [dataset[i][0] for i in range(len(dataset))]  # a later epoch
    assert len(calls) == 20
    assert all((a == b).all() for a, b in zip(first, second))
    direct = DecodeCache(None)
    np.testing.assert_array_equal(direct.load(kept[0].path), cache.load(kept[0].path))
    assert len(calls) == 21  # without a cache every load decodes


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
