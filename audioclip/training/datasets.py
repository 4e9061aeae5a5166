"""Data set indexes in their published layouts (UrbanSound8K, ESC-50, labelled folders) with their folds."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..audio import AUDIO_EXTENSIONS
from ..model import SAMPLE_RATE
from ..model.labels import window_samples

log = logging.getLogger(__name__)

DATASETS = ("us8k", "esc50", "folder")
FOLDER_FOLDS = 5


class DatasetError(ValueError):
    """A data set is missing, incomplete or inconsistent."""


@dataclass(frozen=True)
class Clip:
    path: Path
    label: int
    fold: int


@dataclass(frozen=True)
class DatasetIndex:
    """Clips of a data set with their labels (as text) and folds ``1..folds``.

    Clips in fold 0 (a folder's ``train`` directory) are never held out.
    """

    name: str
    root: Path
    labels: list[str]
    clips: list[Clip]
    folds: int
    clip_samples: int

    def check_fold(self, fold: int) -> int:
        if not 1 <= fold <= self.folds:
            raise DatasetError(f"fold {fold} is out of range: {self.name} has folds 1..{self.folds}")
        return fold

    def split(self, fold: int) -> tuple[list[Clip], list[Clip]]:
        """``(train, test)``: test on fold ``fold``, train on every other clip."""
        self.check_fold(fold)
        train = [c for c in self.clips if c.fold != fold]
        test = [c for c in self.clips if c.fold == fold]
        missing = sorted({self.labels[i] for i in range(len(self.labels))} - {self.labels[c.label] for c in train})
        if missing:
            raise DatasetError(f"{self.name} fold {fold}: no training clips for class {missing[0]!r}")
        if not test:
            raise DatasetError(f"{self.name} fold {fold}: no clips to test on")
        return train, test


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path}: metadata file not found (is --data-root the data set's top folder?)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise DatasetError(f"{path}: lacks column(s) {', '.join(absent)}")
        rows = list(reader)
    if not rows:
        raise DatasetError(f"{path}: lists no clips")
    return rows


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: audio folder not found")
    return path


def _check_present(name: str, clips: list[Clip]) -> None:
    absent = [c.path for c in clips if not c.path.is_file()]
    if absent:
        more = f" and {len(absent) - 1} more" if len(absent) > 1 else ""
        raise DatasetError(f"{name}: {len(absent)} of {len(clips)} listed files are absent, e.g. {absent[0]}{more}")


def _indexed(name: str, root: Path, rows: list[tuple[str, int, str, int]], folds: int, seconds: float) -> DatasetIndex:
    """``rows`` of (relative path, class id, class name, fold) -> index with labels ordered by class id."""
    names: dict[int, str] = {}
    for _, class_id, class_name, fold in rows:
        if names.setdefault(class_id, class_name) != class_name:
            raise DatasetError(f"{name}: class id {class_id} is named both {names[class_id]!r} and {class_name!r}")
        if not 1 <= fold <= folds:
            raise DatasetError(f"{name}: fold {fold} in the metadata is outside 1..{folds}")
    ids = sorted(names)
    position = {class_id: i for i, class_id in enumerate(ids)}
    labels = [names[i].replace("_", " ") for i in ids]
    clips = [Clip(root / rel, position[class_id], fold) for rel, class_id, _, fold in rows]
    _check_present(name, clips)
    return DatasetIndex(name, root, labels, clips, folds, round(seconds * SAMPLE_RATE))


def _int(value: str, what: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise DatasetError(f"{path}: {what} {value!r} is not an integer") from None


def load_us8k(root: Path) -> DatasetIndex:
    """UrbanSound8K: ``metadata/UrbanSound8K.csv`` and ``audio/fold1..10``; 10 folds, 4-s clips."""
    csv_path = root / "metadata" / "UrbanSound8K.csv"
    rows = _read_csv(csv_path, ("slice_file_name", "fold", "classID", "class"))
    audio = _require_dir(root / "audio")
    parsed = []
    for r in rows:
        fold = _int(r["fold"], "fold", csv_path)
        parsed.append((f"fold{fold}/{r['slice_file_name']}", _int(r["classID"], "classID", csv_path), r["class"], fold))
    return _indexed("us8k", audio, parsed, 10, 4.0)


def load_esc50(root: Path) -> DatasetIndex:
    """ESC-50: ``meta/esc50.csv`` and ``audio/*.wav``; 5 folds, 5-s clips."""
    csv_path = root / "meta" / "esc50.csv"
    rows = _read_csv(csv_path, ("filename", "fold", "target", "category"))
    audio = _require_dir(root / "audio")
    parsed = [(r["filename"], _int(r["target"], "target", csv_path), r["category"], _int(r["fold"], "fold", csv_path))
              for r in rows]
    return _indexed("esc50", audio, parsed, 5, 5.0)


def _audio_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def _class_dirs(directory: Path) -> dict[str, list[Path]]:
    dirs = [d for d in sorted(directory.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    classes = {d.name: _audio_files(d) for d in dirs}
    if not classes:
        raise DatasetError(f"{directory}: no class folders (expected DIR/<label>/*.wav)")
    for name, files in classes.items():
        if not files:
            raise DatasetError(f"{directory / name}: class {name!r} has no audio files ({', '.join(AUDIO_EXTENSIONS)})")
    return classes


def load_folder(root: Path, seed: int = 0, folds: int = FOLDER_FOLDS, seconds: float = 5.0) -> DatasetIndex:
    """``DIR/<label>/*``: a seeded, stratified ``folds``-fold split; or ``DIR/train`` and ``DIR/test`` (one fold)."""
    _require_dir(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        parts = {0: _class_dirs(root / "train"), 1: _class_dirs(root / "test")}
        names = sorted(set(parts[0]) | set(parts[1]))
        clips = [Clip(path, names.index(name), fold) for fold, classes in parts.items()
                 for name, files in classes.items() for path in files]
        folds = 1
    else:
        classes = _class_dirs(root)
        names = sorted(classes)
        rng = np.random.default_rng(seed)
        clips = []
        for label, name in enumerate(names):
            files = classes[name]
            order = rng.permutation(len(files))
            clips += [Clip(files[j], label, 1 + k % folds) for k, j in enumerate(order)]
    labels = [n.replace("_", " ") for n in names]
    return DatasetIndex("folder", root, labels, clips, folds, round(seconds * SAMPLE_RATE))


def load_dataset(kind: str, root: str | os.PathLike, *, seed: int = 0,
                 clip_seconds: float | None = None) -> DatasetIndex:
    """Index of ``kind`` (us8k, esc50, folder) under ``root``; ``clip_seconds`` overrides the clip length."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"{root}: data root not found")
    if kind == "us8k":
        index = load_us8k(root)
    elif kind == "esc50":
        index = load_esc50(root)
    elif kind == "folder":
        index = load_folder(root, seed)
    else:
        raise DatasetError(f"unknown data set {kind!r}; choose one of {', '.join(DATASETS)}")
    if clip_seconds is not None:  # one FBSP frame to MAX_WINDOW_SECONDS: a batch holds batch_size of them
        index = replace(index, clip_samples=window_samples(clip_seconds, name="clip_seconds"))
    log.info("%s: %d clips, %d classes, %d fold(s)", index.name, len(index.clips), len(index.labels), index.folds)
    return index
