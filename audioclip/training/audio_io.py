"""The decode cache: clips decoded once by :func:`audioclip.audio.load_audio`, kept as ``.npy`` files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..audio import RESAMPLE_QUALITY, AudioFileError, load_audio
from ..files import atomic_write

DECODE_VERSION = 2
"""Bumped when decoding changes what a file's samples are (2: one resampling quality for every path).
Entries are keyed by it and by the resampling quality, so clips decoded the old way are decoded again."""


class DecodeCache:
    """Decoded, resampled clips stored as ``.npy`` files keyed by path, size, modification time and decoder.

    Writes are atomic (temporary file, then rename), so data-loader workers and ranks can share
    one directory. ``directory=None`` disables the cache: every load decodes.
    """

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else Path(directory).expanduser()

    def _entry(self, path: Path) -> Path:
        stat = path.stat()
        key = f"v{DECODE_VERSION}|{RESAMPLE_QUALITY}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        return self.directory / f"{hashlib.sha1(key).hexdigest()}.npy"

    def contains(self, path: str | os.PathLike) -> bool:
        return self.directory is not None and Path(path).is_file() and self._entry(Path(path)).is_file()

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """The decoded clip, from the cache when present, else decoded (and stored when caching)."""
        path = Path(path)
        if self.directory is None:
            return load_audio(path)
        try:
            entry = self._entry(path)
        except OSError as e:
            raise AudioFileError(f"{path}: {e.strerror or e}") from e
        if entry.is_file():
            return np.load(entry)
        samples = load_audio(path)
        atomic_write(entry, lambda f: np.save(f, samples), durable=False)  # a cache: decoded again if lost
        return samples
