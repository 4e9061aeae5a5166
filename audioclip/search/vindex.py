"""A FAISS vector index over an archive's ``embeddings.npy``, for archives too large for exact search.

Every row is scored, none is skipped: a flat scan over 8-bit codes proposes candidates, which are
scored again in float32 from the stored float16 rows, so a hit's score is the same cosine similarity
exact search gives that row. Each dimension's range (its minimum and maximum over a random sample
of rows) is cut into 255 steps and a row stored as its step numbers, as FAISS's ``SQ8`` does; the
codes go to FAISS as ``QT_8bit_direct_signed``, whose scan is faster than ``SQ8``'s (no decoding), and the
query is multiplied by each dimension's step and scaled to whole numbers in -127..127 (FAISS reads
such a query as 8-bit numbers too), so the scan ranks rows by their dot product with the decoded
rows, up to the query's rounding (the constant the ranges add is the same for every row).

There are no inverted lists: an IVF index visits the lists whose centroids are nearest the query,
and for queries far from every row, as text queries are from audio embeddings, those are often not
the lists that hold the best rows (docs/archive.md, "Search: exact and the vector index").

The index lives beside the embeddings as ``vectors.faiss`` with a JSON sidecar ``vectors.json``
that records what it was built from (the embeddings' rows, dimensions, size and modification time)
and the ranges; a later search opens it memory-mapped. A sidecar that no longer matches
(``audioclip-label --resume`` rewrote the embeddings, or an older kind of index), or an index file
FAISS cannot read, means the index is built again. Both files are written to a temporary name and
renamed.

``faiss`` is imported only here, inside functions: ``import audioclip.archive`` does not load it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np

from ..files import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
SIDECAR_FILE = "vectors.json"
FORMAT = 2
"""1 was an ``IVF{nlist},SQ8`` index; a sidecar of another format means the index is built again."""
KIND = "flat 8-bit scan"
TRAIN_ROWS = 100_000
"""Rows drawn at random to find each dimension's range; values outside it are clipped to it."""
ADD_ROWS = 1 << 16
LEVELS = 255


def _source(embeddings_path: Path, embeddings: np.ndarray) -> dict:
    st = embeddings_path.stat()
    return {"rows": int(embeddings.shape[0]), "dim": int(embeddings.shape[1]), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _codes(x: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Rows ``x`` as float32 step numbers in 0-255, less 128: what ``QT_8bit_direct_signed`` stores as bytes."""
    return np.clip(np.rint((np.asarray(x, np.float32) - low) / step), 0, LEVELS).astype(np.float32) - 128


def _scan_query(query: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The query FAISS scans with: times each dimension's step, scaled to whole numbers in -127..127 (FAISS
    rounds a ``QT_8bit_direct_signed`` query to whole numbers; one factor for all dimensions keeps the ranking)."""
    scan = query * scale
    top = float(np.abs(scan).max())
    return np.rint(scan * np.float32(127 / top)) if top > 0 else scan


class VectorIndex:
    """A FAISS index over ``embeddings`` ``[N, D]`` whose candidates are re-scored exactly from those rows.

    ``scale`` (``[D]``) multiplies a query before FAISS sees it (the flat scan's steps); ``None`` passes
    it as it is, for any inner-product index (the benchmark compares others this way).
    """

    def __init__(self, index, embeddings: np.ndarray, scale: np.ndarray | None = None, *, low=None):
        self.index, self.embeddings = index, embeddings
        self.scale = None if scale is None else np.asarray(scale, np.float32)
        self.low = None if low is None else np.asarray(low, np.float32)

    @classmethod
    def build(cls, embeddings: np.ndarray, *, train_rows: int = TRAIN_ROWS, seed: int = 0) -> VectorIndex:
        """Find each dimension's range on a random sample of the rows (sorted, so a memory map reads forwards),
        then add all rows as 8-bit codes."""
        import faiss

        rows, dim = embeddings.shape
        sample = np.sort(np.random.default_rng(seed).choice(rows, min(rows, train_rows), replace=False))
        sample = np.asarray(embeddings[sample], np.float32)
        low = sample.min(axis=0)
        step = np.maximum(sample.max(axis=0) - low, np.float32(1e-6)) / np.float32(LEVELS)
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit_direct_signed, faiss.METRIC_INNER_PRODUCT)
        for start in range(0, rows, ADD_ROWS):
            index.add(_codes(embeddings[start:start + ADD_ROWS], low, step))
        return cls(index, embeddings, step, low=low)

    def extend(self, embeddings: np.ndarray) -> None:
        """The rows are now ``embeddings``, whose first rows are the ones indexed: index the rest, coded with the
        ranges found at :meth:`build` (values outside them are clipped; the candidates are scored exactly anyway)."""
        for start in range(self.index.ntotal, len(embeddings), ADD_ROWS):
            self.index.add(_codes(embeddings[start:start + ADD_ROWS], self.low, self.scale))
        self.embeddings = embeddings

    def search(self, query: np.ndarray, k: int, *, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` of the best ``k`` of the index's candidates, best first (ties: lower row first).

        The index proposes ``4 k + 32`` candidates (as many as exact search keeps per block); each is
        scored in float32 against its stored row, so the scores are those exact search gives. ``mask``
        (bool ``[N]``): only those rows are candidates (the scan skips the others).
        """
        import faiss

        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number at least 1, got {k!r}")
        query = np.asarray(query, np.float32).reshape(-1)
        if len(query) != self.embeddings.shape[1]:
            raise ValueError(f"the query has {len(query)} dimensions, the index {self.embeddings.shape[1:]}")
        take = min(4 * k + 32, len(self.embeddings))
        scan = query if self.scale is None else _scan_query(query, self.scale)
        params = None
        if mask is not None:
            bits = np.packbits(np.asarray(mask, bool)[:self.index.ntotal], bitorder="little")
            params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(self.index.ntotal, faiss.swig_ptr(bits)))
        _, found = self.index.search(np.ascontiguousarray(scan[None]), take, params=params)
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
        sidecar = {"format": FORMAT, "kind": KIND, "faiss": faiss.__version__, "source": source,
                   "index_size": path.stat().st_size, "low": self.low.tolist(), "step": self.scale.tolist()}
        atomic_write_text(root / SIDECAR_FILE, json.dumps(sidecar) + "\n")

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
        except (OSError, ValueError) as e:
            raise ValueError(f"{sidecar_path}: {e}") from e
        if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
            log.info("%s: the vector index is of an older kind", root)
            return None
        if sidecar.get("source") != source:
            log.info("%s: the embeddings changed since the vector index was built", root)
            return None
        try:
            low, step = (np.asarray(sidecar[key], np.float32) for key in ("low", "step"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{sidecar_path}: {e!r}") from e
        if low.shape != (source["dim"],) or step.shape != (source["dim"],) or not np.all(step > 0):
            raise ValueError(f"{sidecar_path}: the ranges do not describe {source['dim']} dimensions")
        if sidecar.get("index_size") != index_path.stat().st_size:
            raise ValueError(f"{index_path}: {index_path.stat().st_size} bytes, the sidecar says "
                             f"{sidecar.get('index_size')}")
        try:
            index = faiss.read_index(str(index_path), faiss.IO_FLAG_MMAP_IFC)  # codes memory-mapped, not read
        except RuntimeError as e:
            detail = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e).strip())  # FAISS's own source location
            raise ValueError(f"{index_path}: {detail}") from e
        if index.ntotal != source["rows"] or index.d != source["dim"]:
            raise ValueError(f"{index_path}: holds {index.ntotal} x {index.d} vectors, the embeddings are "
                             f"{source['rows']} x {source['dim']}")
        return cls(index, embeddings, step, low=low)


def open_or_build(root: str | os.PathLike, embeddings: np.ndarray) -> VectorIndex | None:
    """The archive's vector index: the saved one when it still matches ``embeddings.npy``, else a new one built
    and saved. ``None`` (with a warning) when FAISS is not installed: the caller searches exactly."""
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
    log.info("building a vector index (%s) over %d x %d embeddings in %s", KIND, *embeddings.shape, root)
    t0 = time.perf_counter()
    index = VectorIndex.build(embeddings)
    try:
        index.save(root, source)
    except OSError as e:  # a read-only archive: search with the index this once
        log.warning("could not save the vector index in %s (%s); it is built again next time", root, e)
    log.info("built the vector index in %.1f s", time.perf_counter() - t0)
    return index


GROW_ROWS = 1 << 14
"""Rows of room a :class:`LiveIndex` adds beyond an eighth of its size when it grows (and reserves at its first
load): a source at one moment per 5 s fills 16,384 in 23 hours."""


class LiveIndex:
    """Rows that grow while they are searched (the monitor's moments, its events): normalised float16 vectors,
    each with an id, a source code and a time (milliseconds since the epoch) to filter on, in the order added.

    A search looks at the rows a filter (source, since) leaves: exactly (:func:`~.search.top_k`, the others
    masked out) when they lie within :data:`~.search.EXACT_MAX_ROWS` consecutive rows, else through a
    :class:`VectorIndex` over all rows, built on first need, extended as rows come and told which rows to
    scan, its candidates scored again exactly. Rows older than :attr:`floor` (deleted by retention, not yet
    dropped) are never returned; :meth:`keep` drops rows for good. ``vectors=False``: never a vector index
    (one search of a million rows is cheaper exact than building one).
    """

    def __init__(self, dim: int, *, vectors: bool = True):
        self.dim = dim
        self.vectors = vectors
        self.n = 0
        self._matrix = np.zeros((0, dim), np.float16)
        self._ids = np.zeros(0, np.int64)
        self._sources = np.zeros(0, np.int32)
        self._times = np.zeros(0, np.int64)
        self.floor: int | None = None  # rows with an earlier time are gone from the database
        self._vectors: VectorIndex | None = None
        self._faiss: bool | None = None

    def __len__(self) -> int:
        return self.n

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix[:self.n]

    @property
    def ids(self) -> np.ndarray:
        return self._ids[:self.n]

    @property
    def times(self) -> np.ndarray:
        return self._times[:self.n]

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows in all, so that appending up to there copies nothing."""
        if rows <= len(self._matrix):
            return
        matrix = np.empty((rows, self.dim), np.float16)
        matrix[:self.n] = self.matrix
        self._matrix = matrix
        for name in ("_ids", "_sources", "_times"):
            old = getattr(self, name)
            new = np.empty(rows, old.dtype)
            new[:self.n] = old[:self.n]
            setattr(self, name, new)
        if self._vectors is not None:
            self._vectors.embeddings = self.matrix

    def append(self, ids, sources, times, vectors: np.ndarray) -> None:
        """Add rows (ids increasing, after the ones held); the vector index takes them at the next search."""
        count = len(ids)
        if vectors.shape != (count, self.dim):
            raise ValueError(f"{vectors.shape[1:]} dimensions, the index holds {self.dim}")
        if self.n + count > len(self._matrix):  # grow by an eighth: a million 1024-d rows are 2 GiB already
            self.reserve(max(self.n + count, len(self._matrix) + len(self._matrix) // 8 + GROW_ROWS))
        end = self.n + count
        self._matrix[self.n:end] = vectors
        self._ids[self.n:end], self._sources[self.n:end], self._times[self.n:end] = ids, sources, times
        self.n = end

    def truncate(self, rows: int) -> None:
        """Keep only the first ``rows`` rows (the later ones are read again)."""
        if rows < self.n:
            self.n = rows
            if self._vectors is not None and self._vectors.index.ntotal > rows:
                self._vectors = None

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the rows of ``mask``: copies every array, and the vector index is built again when needed."""
        for name in ("_matrix", "_ids", "_sources", "_times"):
            setattr(self, name, np.ascontiguousarray(getattr(self, name)[:self.n][mask]))
        self.n = len(self._ids)
        self._vectors = None

    def search(self, query: np.ndarray, k: int, *, source: int | None = None, since: int | None = None,
               exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of the ``k`` rows closest to the normalised ``query`` among those of ``source`` (a
        code) whose time is at least ``since``, best first (ties: the earlier row)."""
        from .exact import EXACT_MAX_ROWS, top_k

        n = self.n
        since = self.floor if since is None else since if self.floor is None else max(since, self.floor)
        mask = None
        if source is not None:
            mask = self._sources[:n] == source
        if since is not None:
            mask = self._times[:n] >= since if mask is None else mask & (self._times[:n] >= since)
        lo, hi, wanted = 0, n, n
        if mask is not None:
            rows = np.flatnonzero(mask)
            wanted = len(rows)
            if wanted == 0:
                return np.zeros(0, np.int64), np.zeros(0, np.float32)
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if wanted == n:
                mask = None
        if wanted == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        vectors = None if exact or hi - lo <= EXACT_MAX_ROWS else self._vector_index()
        if vectors is not None:
            found, scores = vectors.search(query, k, mask=mask)
            if len(found) >= min(k, wanted):
                return self._ids[found], scores
        inner = None if mask is None or wanted == hi - lo else mask[lo:hi]  # one run of rows: sliced, not masked
        found, scores = top_k(self._matrix[lo:hi], query, k, mask=inner)
        return self._ids[found + lo], scores

    def prepare(self) -> None:
        """Build (or extend) the vector index now if a search over every row would use one."""
        from .exact import EXACT_MAX_ROWS

        if self.n > EXACT_MAX_ROWS:
            self._vector_index()

    def _vector_index(self) -> VectorIndex | None:
        """The vector index over every row (built the first time, then extended); None without FAISS or with
        ``vectors=False``."""
        if not self.vectors:
            return None
        if self._faiss is None:
            try:
                import faiss  # noqa: F401

                self._faiss = True
            except ImportError:
                log.warning("FAISS is not installed: searching %d embeddings exactly, which is slow; "
                            "pip install faiss-cpu for a vector index", self.n)
                self._faiss = False
        if not self._faiss:
            return None
        if self._vectors is None:
            t0 = time.perf_counter()
            self._vectors = VectorIndex.build(self.matrix)
            log.info("built a vector index (%s) over %d x %d embeddings in %.1f s", KIND, self.n, self.dim,
                     time.perf_counter() - t0)
        elif self._vectors.index.ntotal < self.n:
            self._vectors.extend(self.matrix)
        self._vectors.embeddings = self.matrix
        return self._vectors
