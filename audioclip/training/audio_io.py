"""Decoding audio files of any rate, bit depth and channel count to the model's contract, with a cache."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from audioclip.model import SAMPLE_RATE

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class AudioFileError(ValueError):
    """An audio file is missing, unreadable or holds no usable samples."""


def decode_audio(path: str | os.PathLike) -> np.ndarray:
    """Samples of ``path`` as 44.1 kHz mono float32 in [-1, 1] (channels averaged, resampled with soxr)."""
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, TypeError) as e:
        raise AudioFileError(f"{path}: cannot decode ({str(e).strip() or type(e).__name__})") from e
    if data.shape[0] == 0:
        raise AudioFileError(f"{path}: holds no samples")
    mono = data.mean(axis=1, dtype=np.float64)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
    if not np.isfinite(mono).all():
        raise AudioFileError(f"{path}: holds NaN or infinite samples")
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


class DecodeCache:
    """Decoded, resampled clips stored as ``.npy`` files keyed by path, size and modification time.

    Writes are atomic (temporary file, then rename), so data-loader workers and ranks can share
    one directory. ``directory=None`` disables the cache: every load decodes.
    """

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = None if directory is None else Path(directory).expanduser()

    def _entry(self, path: Path) -> Path:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
        return self.directory / f"{hashlib.sha1(key).hexdigest()}.npy"

    def contains(self, path: str | os.PathLike) -> bool:
        return self.directory is not None and self._entry(Path(path)).is_file()

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """The decoded clip, from the cache when present, else decoded (and stored when caching)."""
        path = Path(path)
        if self.directory is None:
            return decode_audio(path)
        try:
            entry = self._entry(path)
        except OSError as e:
            raise AudioFileError(f"{path}: {e.strerror or e}") from e
        if entry.is_file():
            return np.load(entry)
        samples = decode_audio(path)
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.stem}.", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, samples)
            os.replace(tmp, entry)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return samples
