"""Torch data sets over decoded clips: caching pass, seeded augmentation, distributed-aware loaders."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..audio import AudioFileError
from .audio_io import DecodeCache
from .augment import Augmentation, crop_or_pad, sample_generator
from .datasets import Clip, DatasetError

log = logging.getLogger(__name__)


class ClipDataset(Dataset):
    """``(waveform [clip_samples] float32, label)`` per clip.

    With an ``augmentation`` a sample's randomness is seeded by ``(seed, epoch, index)``; set
    ``epoch`` before iterating (workers are re-created each epoch, so they see it). Without one,
    clips are centre cropped or padded (evaluation).
    """

    def __init__(self, clips: list[Clip], cache: DecodeCache, clip_samples: int,
                 augmentation: Augmentation | None = None, seed: int = 0):
        self.clips = clips
        self.cache = cache
        self.clip_samples = clip_samples
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip = self.clips[index]
        x = self.cache.load(clip.path)
        if self.augmentation is None:
            y = crop_or_pad(x, self.clip_samples)
        else:
            y = self.augmentation(x, self.clip_samples, sample_generator(self.seed, self.epoch, index))
        return torch.from_numpy(np.ascontiguousarray(y)), clip.label


class _Decode(Dataset):
    def __init__(self, clips: list[Clip], cache: DecodeCache):
        self.clips, self.cache = clips, cache

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> str:
        try:
            self.cache.load(self.clips[index].path)
        except AudioFileError as e:
            return str(e)
        return ""


def prepare_clips(clips: list[Clip], cache: DecodeCache, *, max_bad_share: float = 0.05, workers: int = 0,
                  on_progress: Callable[[int], None] | None = None) -> list[Clip]:
    """Decode every clip into ``cache`` once; skip unreadable ones with a warning.

    Raises :class:`DatasetError` when more than ``max_bad_share`` of the clips cannot be decoded.
    """
    todo = [i for i, c in enumerate(clips) if not cache.contains(c.path)]
    bad: dict[int, str] = {}
    if todo:
        loader = DataLoader(_Decode([clips[i] for i in todo], cache), batch_size=None, num_workers=workers)
        for i, error in zip(todo, loader):
            if error:
                bad[i] = error
            if on_progress is not None:
                on_progress(1)
    if on_progress is not None and len(todo) < len(clips):
        on_progress(len(clips) - len(todo))
    if bad:
        share = len(bad) / len(clips)
        if share > max_bad_share:
            raise DatasetError(f"{len(bad)} of {len(clips)} clips ({share:.1%}) cannot be decoded, more than the "
                               f"{max_bad_share:.0%} allowed; first: {next(iter(bad.values()))}")
        for error in bad.values():
            log.warning("skipping %s", error)
        log.warning("skipped %d of %d clips that cannot be decoded", len(bad), len(clips))
    return [c for i, c in enumerate(clips) if i not in bad]


def make_loader(dataset: ClipDataset, *, batch_size: int, shuffle: bool, seed: int, workers: int,
                rank: int = 0, world_size: int = 1, pin_memory: bool = False) -> DataLoader:
    """A loader over this rank's shard; training order is a function of ``seed`` and ``sampler.set_epoch``."""
    if shuffle:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
    else:
        sampler = list(range(rank, len(dataset), world_size))  # each clip once over all ranks, no padding
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=False, persistent_workers=False)


def check_classes(clips: list[Clip], labels: list[str], what: str) -> None:
    """Raise when a class has no clip in ``clips`` (e.g. after skipping unreadable files)."""
    present = {c.label for c in clips}
    for i, name in enumerate(labels):
        if i not in present:
            raise DatasetError(f"{what}: class {name!r} has no readable clips")
