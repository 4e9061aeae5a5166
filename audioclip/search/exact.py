"""Exact nearest-neighbour search over stored embeddings: the cosine of a query to every row, in blocks.

Normalised float16 rows (what the archive and the monitor store) against a float32 query; up to
:data:`EXACT_MAX_ROWS` rows the searches are exact, beyond that a FAISS vector index (:mod:`.vindex`) proposes
candidates that are scored again here, so the scores stay exact.
"""

from __future__ import annotations

import warnings

import numpy as np

BLOCK_ROWS = 1 << 16
EXACT_MAX_ROWS = 150_000
"""Archives up to this many rows are searched exactly: on the 2-core development machine exact search over
150,000 x 1024 took 64 ms, over 200,000 100 ms, and grows linearly beyond (docs/archive.md, "Measured")."""


def top_k(embeddings: np.ndarray, query: np.ndarray, k: int, *,
          mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, scores)`` of the ``k`` rows of ``embeddings`` ``[N, D]`` with the highest dot product
    with ``query`` ``[D]``, best first (ties: lower row first); ``mask`` (bool ``[N]``): among those rows only.

    Exact search in blocks: a float16 matrix-vector product in PyTorch picks ``4 k + 32`` candidates
    per block (numpy has no fast float16 product), and the candidates are scored again in float32,
    so the scores returned are float32 dot products of the stored rows.
    """
    import torch

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a whole number at least 1, got {k!r}")
    query = np.asarray(query, np.float32).reshape(-1)
    if embeddings.ndim != 2 or embeddings.shape[1] != len(query):
        raise ValueError(f"the query has {len(query)} dimensions, the index {embeddings.shape[1:]}")
    q16 = torch.from_numpy(query.astype(embeddings.dtype))
    best_rows, best_scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
    for start in range(0, len(embeddings), BLOCK_ROWS):
        block = np.asarray(embeddings[start:start + BLOCK_ROWS])
        valid = None if mask is None else np.asarray(mask[start:start + BLOCK_ROWS], bool)
        count = len(block) if valid is None else int(valid.sum())
        if count == 0:
            continue
        with warnings.catch_warnings():  # a read-only memory map: torch only reads it
            warnings.simplefilter("ignore", UserWarning)
            rough = (torch.from_numpy(block) @ q16).float()
        if valid is not None:
            rough[torch.from_numpy(~valid)] = -torch.inf
        take = min(4 * k + 32, count)
        if take < len(block):
            idx = torch.topk(rough, take, sorted=False).indices.numpy()
        else:
            idx = np.arange(len(block)) if valid is None else np.flatnonzero(valid)
        best_rows = np.concatenate([best_rows, idx + start])
        best_scores = np.concatenate([best_scores, block[idx].astype(np.float32) @ query])
        order = np.lexsort((best_rows, -best_scores))[:k]
        best_rows, best_scores = best_rows[order], best_scores[order]
    return best_rows, best_scores
