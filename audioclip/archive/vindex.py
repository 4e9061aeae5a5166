"""A FAISS vector index over an archive's ``embeddings.npy``, for archives too large for exact search.

An inverted-file index with 8-bit scalar quantisation (``IVF{nlist},SQ8``, inner product) proposes
candidates; they are scored again in float32 from the stored float16 rows, so a hit's score is the
same cosine similarity exact search gives that row. The index lives beside the embeddings as
``vectors.faiss`` with a JSON sidecar ``vectors.json`` that records what it was built from (the
embeddings' rows, dimensions, size and modification time) and its parameters; a later search
opens it memory-mapped, so a gigabyte of index costs no load time. A sidecar that no
longer matches (``audioclip-label --resume`` rewrote the embeddings), or an index file FAISS cannot
read, means the index is built again. Both files are written to a temporary name and renamed.

``faiss`` is imported only here, inside functions: ``import audioclip.archive`` does not load it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"
FORMAT = 1
NLIST_PER_SQRT = 1.0
"""Inverted lists per square root of the rows: 1,000 lists for a million rows (see docs/archive.md)."""
NPROBE_SHARE = 1 / 8
"""The share of the lists one search visits (at least :data:`MIN_NPROBE`): 125 of 1,000 for a million rows."""
MIN_NPROBE = 16
TRAIN_ROWS = 100_000
"""Rows drawn at random to train the coarse and the scalar quantiser (more past 2,500 lists: 40 per list)."""
ADD_ROWS = 1 << 16


@dataclass(frozen=True)
class IndexParams:
    factory: str
    nlist: int
    nprobe: int
    train_rows: int

    @classmethod
    def for_rows(cls, rows: int, *, nprobe_share: float = NPROBE_SHARE, factory: str = "IVF{nlist},SQ8") -> IndexParams:
        """Parameters for ``rows`` embeddings: about ``sqrt(rows)`` lists, each trained on 39 rows or more."""
        nlist = max(1, min(rows // 39, round(NLIST_PER_SQRT * math.sqrt(rows))))
        nprobe = min(nlist, max(MIN_NPROBE, math.ceil(nlist * nprobe_share)))
        return cls(factory.format(nlist=nlist), nlist, nprobe, min(rows, max(TRAIN_ROWS, 40 * nlist)))


def _source(embeddings_path: Path, embeddings: np.ndarray) -> dict:
    st = embeddings_path.stat()
    return {"rows": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


class VectorIndex:
    """A FAISS index over ``embeddings`` ``[N, D]`` whose candidates are re-scored exactly from those rows."""

    def __init__(self, index, embeddings: np.ndarray, params: IndexParams):
        import faiss

        self.index, self.embeddings, self.params = index, embeddings, params
        faiss.extract_index_ivf(index).nprobe = params.nprobe

    @classmethod
    def build(cls, embeddings: np.ndarray, params: IndexParams | None = None, *, seed: int = 0) -> VectorIndex:
        """Train on a random sample of the rows (sorted, so a memory map reads forwards), then add all rows."""
        import faiss

        rows, dim = embeddings.shape
        params = params or IndexParams.for_rows(rows)
        index = faiss.index_factory(dim, params.factory, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(seed).choice(rows, params.train_rows, replace=False))
        index.train(np.ascontiguousarray(embeddings[sample], np.float32))
        for start in range(0, rows, ADD_ROWS):
            index.add(np.ascontiguousarray(embeddings[start:start + ADD_ROWS], np.float32))
        return cls(index, embeddings, params)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of the best ``k`` of the index's candidates, best first (ties: lower row first).

        The index proposes ``4 k + 32`` candidates (as many as exact search keeps per block); each is
        scored in float32 against its stored row, so the scores are those exact search gives.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number at least 1, got {k!r}")
        query = np.asarray(query, np.float32).reshape(-1)
        if len(query) != self.embeddings.shape[1]:
            raise ValueError(f"the query has {len(query)} dimensions, the index {self.embeddings.shape[1:]}")
        take = min(4 * k + 32, len(self.embeddings))
        _, found = self.index.search(query[None], take)
        rows = np.unique(found[0][found[0] >= 0])  # sorted: the memory map is read forwards
        scores = np.asarray(self.embeddings[rows], np.float32) @ query
        order = np.lexsort((rows, -scores))[:k]
        return rows[order], scores[order]

    def save(self, root: Path, source: dict) -> None:
        """Remove the old sidecar, write the index, then the sidecar that vouches for it: a crash on the way leaves
        an index without a sidecar, which the next search builds again."""
        import faiss

        (root / SIDECAR_FILE).unlink(missing_ok=True)

        def write(f) -> None:
            faiss.write_index(self.index, faiss.PyCallbackIOWriter(f.write))

        path = atomic_write(root / INDEX_FILE, write)
        sidecar = {"format": FORMAT, "faiss": faiss.__version__, "source": source, "params": asdict(self.params),
                   "index_size": path.stat().st_size}
        atomic_write_text(root / SIDECAR_FILE, json.dumps(sidecar, indent=1) + "\n")

    @classmethod
    def load(cls, root: Path, embeddings: np.ndarray, source: dict) -> VectorIndex | None:
        """The saved index if its sidecar describes ``source`` and FAISS reads it; ``None`` when it is missing or
        stale; :class:`ValueError` when the files are there but unreadable."""
        import faiss

        index_path, sidecar_path = root / INDEX_FILE, root / SIDECAR_FILE
        if not index_path.is_file() or not sidecar_path.is_file():
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
            params = IndexParams(**sidecar["params"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{sidecar_path}: {e}") from e
        if sidecar.get("format") != FORMAT or sidecar.get("source") != source:
            log.info("%s: the embeddings changed since the vector index was built", root)
            return None
        if sidecar.get("index_size") != index_path.stat().st_size:
            raise ValueError(f"{index_path}: {index_path.stat().st_size} bytes, the sidecar says "
                             f"{sidecar.get('index_size')}")
        try:
            index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP)  # lists paged in as searched
        except RuntimeError as e:
            detail = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e).strip())  # FAISS's own source location
            raise ValueError(f"{index_path}: {detail}") from e
        if index.ntotal != source["rows"] or index.d != source["dim"]:
            raise ValueError(f"{index_path}: holds {index.ntotal} x {index.d} vectors, the embeddings are "
                             f"{source['rows']} x {source['dim']}")
        return cls(index, embeddings, params)


def open_or_build(root: str | os.PathLike, embeddings: np.ndarray, params: IndexParams | None = None
                  ) -> VectorIndex | None:
    """The archive's vector index: the saved one when it still matches ``embeddings.npy``, else a new one built
    with ``params`` (default :meth:`IndexParams.for_rows`) and saved. ``None`` (with a warning) when FAISS is not
    installed: the caller searches exactly."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        log.warning("FAISS is not installed: searching %d embeddings exactly, which is slow; "
                    "pip install faiss-cpu for a vector index", len(embeddings))
        return None
    root = Path(root)
    source = _source(root / "embeddings.npy", embeddings)
    try:
        index = VectorIndex.load(root, embeddings, source)
    except ValueError as e:
        log.warning("the vector index is unreadable, building it again: %s", e)
        index = None
    if index is not None:
        return index
    params = params or IndexParams.for_rows(len(embeddings))
    log.info("building a vector index (%s) over %d x %d embeddings in %s", params.factory, *embeddings.shape, root)
    t0 = time.perf_counter()
    index = VectorIndex.build(embeddings, params)
    try:
        index.save(root, source)
    except OSError as e:  # a read-only archive: search with the index this once
        log.warning("could not save the vector index in %s (%s); it is built again next time", root, e)
    log.info("built the vector index in %.1f s", time.perf_counter() - t0)
    return index
