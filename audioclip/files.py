"""Crash-safe file writes: the bytes go to a temporary file beside the target, which is then renamed over it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, durable: bool = True) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    A reader sees the old file or the whole new one, never a half-written one, and a failed write
    leaves no temporary file behind. ``durable``: the file's bytes are fsynced before the rename and
    the folder after it, so that a power cut right after the call leaves the new file, not an empty
    one (a regenerable cache may skip it). The file gets the mode ``open()`` would give it (the
    umask's), not ``mkstemp``'s private 0600. Parent folders are created. Returns ``path`` as a ``Path``.
    The one atomic write of the project: checkpoints, archives, indexes and the monitor's clips use it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are metadata-journaled
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    """``text`` (UTF-8) written to ``path`` with :func:`atomic_write`."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable=durable)
