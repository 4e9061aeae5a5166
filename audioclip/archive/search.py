"""Search a labelled archive's window embeddings, or the monitor's events, by text, by a sound, or by a picture.

The index is an ``audioclip-label --embeddings`` output folder (a monitor's detections database:
:class:`audioclip.monitor.index.MonitorIndex`). An archive folder holds ``embeddings.npy`` (float16,
normalised, one row per window) beside ``windows.parquet`` (file, t_start, t_end). Up to
:data:`EXACT_MAX_ROWS` rows search is exact: the cosine similarity of the query to every row, in
blocks, and the best ``k``. Beyond, a FAISS vector index (:mod:`.vindex`), built on the first search
and saved in the folder, proposes candidates that are scored exactly, so the scores stay exact.
Queries are embedded by the model the archive was labelled with: its text tower, its audio
head (the clip cut into the archive's windows, embeddings averaged), or its image tower with
CLIP's preprocessing (:func:`clip_preprocess`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..search import exact as exact_search
from ..search.query import query_checkpoint

log = logging.getLogger(__name__)

@dataclass
class Hit:
    file: str
    t_start: float
    t_end: float
    score: float

    def to_json(self) -> dict:
        return {"file": self.file, "t_start": round(self.t_start, 6), "t_end": round(self.t_end, 6),
                "score": round(self.score, 6)}


class ArchiveIndex:
    """An ``audioclip-label --embeddings`` folder opened for search (embeddings memory-mapped)."""

    def __init__(self, root: Path, settings: dict, embeddings: np.ndarray, files, t_start, t_end):
        self.root, self.settings = root, settings
        self.embeddings, self.files, self.t_start, self.t_end = embeddings, files, t_start, t_end
        self.window = float(settings["window"])
        self._vectors, self._vectors_opened = None, False

    @classmethod
    def open(cls, root: str | os.PathLike) -> ArchiveIndex:
        import pyarrow.parquet as pq

        root = Path(root)
        if not root.exists():
            raise ValueError(f"{root}: no such file or folder; give an audioclip-label output folder or a monitor's "
                             "database")
        if not (root / "archive.json").is_file():
            raise ValueError(f"{root}: not an audioclip-label output folder (no archive.json) nor a monitor's "
                             "database")
        settings = json.loads((root / "archive.json").read_text(encoding="utf-8"))
        if not settings.get("embeddings") or not (root / "embeddings.npy").is_file():
            raise ValueError(f"{root} holds no embeddings: label it with --embeddings to search it")
        embeddings = np.load(root / "embeddings.npy", mmap_mode="r")
        table = pq.read_table(root / "windows.parquet", columns=["file", "t_start", "t_end"])
        if table.num_rows != len(embeddings):
            raise ValueError(f"{root}: windows.parquet has {table.num_rows} rows but embeddings.npy "
                             f"{len(embeddings)}; label it again with --resume")
        files = table.column("file").combine_chunks().dictionary_encode()
        return cls(root, settings, embeddings, files, table.column("t_start").to_numpy(),
                   table.column("t_end").to_numpy())

    def model_for(self, checkpoint: str | None) -> str:
        """The checkpoint that embeds queries: the index's own; another one is refused, naming both."""
        return query_checkpoint(self.root, self.settings["model"], checkpoint)

    def vector_index(self):
        """The archive's :class:`~audioclip.search.vindex.VectorIndex`, opened or built on first use; ``None``
        without FAISS."""
        if not self._vectors_opened:
            from ..search.vindex import open_or_build

            self._vectors, self._vectors_opened = open_or_build(self.root, self.embeddings), True
        return self._vectors

    def search(self, query: np.ndarray, *, k: int = 10, exact: bool = False) -> list[Hit]:
        """The ``k`` windows closest to ``query``: exactly for ``exact`` or up to :data:`EXACT_MAX_ROWS` rows,
        else through the archive's vector index (built and saved on the first search)."""
        query = np.asarray(query, np.float32)
        query = query / np.linalg.norm(query)
        vectors = None if exact or len(self.embeddings) <= exact_search.EXACT_MAX_ROWS else self.vector_index()
        found = None if vectors is None else vectors.search(query, k)
        if found is None or len(found[0]) < min(k, len(self.embeddings)):  # fewer candidates than k: exactly
            found = exact_search.top_k(self.embeddings, query, k)
        rows, scores = found
        names = self.files.dictionary
        indices = self.files.indices
        return [Hit(names[indices[r].as_py()].as_py(), float(self.t_start[r]), float(self.t_end[r]), float(s))
                for r, s in zip(rows, scores)]


SQLITE_HEADER = b"SQLite format 3\x00"


def is_sqlite(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts like an SQLite database."""
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    except (IsADirectoryError, FileNotFoundError, NotADirectoryError):
        return False
