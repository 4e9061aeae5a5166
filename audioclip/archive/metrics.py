"""The AudioCLIP paper's querying metrics (Table 4): precision at 1, recall at 1, mean average precision.

Queries (texts, sounds or images) rank every item of a collection by similarity; an item is
relevant to a query when they share a class. Per query: P@1 is 1 when the best-ranked item is
relevant; R@1 is the share of the query's relevant items found at rank 1 (1 / number relevant, or
0); average precision is the mean, over the relevant items, of the precision at each one's rank.
Each metric is the mean over the queries that have at least one relevant item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RetrievalMetrics:
    p_at_1: float
    r_at_1: float
    mean_ap: float
    queries: int

    def to_json(self) -> dict:
        return {"P@1": self.p_at_1, "R@1": self.r_at_1, "mAP": self.mean_ap, "queries": self.queries}


def retrieval_metrics(scores: np.ndarray, relevant: np.ndarray) -> RetrievalMetrics:
    """Metrics of ``scores`` ``[Q, N]`` (higher is closer) against the boolean ``relevant`` ``[Q, N]``.

    Ties are broken by item order (a stable sort of the negated scores). Queries without a relevant
    item are left out; ``ValueError`` when none is left or the shapes differ.
    """
    scores, relevant = np.asarray(scores, np.float64), np.asarray(relevant, bool)
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise ValueError(f"scores and relevant must both be [queries, items], got {scores.shape} and {relevant.shape}")
    keep = relevant.any(axis=1)
    if not keep.any():
        raise ValueError("no query has a relevant item")
    scores, relevant = scores[keep], relevant[keep]
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)  # [Q, N]: relevance in rank order
    n_relevant = hits.sum(axis=1)
    ranks = np.arange(1, hits.shape[1] + 1)
    precision = np.cumsum(hits, axis=1) / ranks
    average_precision = (precision * hits).sum(axis=1) / n_relevant
    return RetrievalMetrics(p_at_1=float(hits[:, 0].mean()), r_at_1=float((hits[:, 0] / n_relevant).mean()),
                            mean_ap=float(average_precision.mean()), queries=int(keep.sum()))


def class_retrieval(query_embeddings: np.ndarray, query_classes, item_embeddings: np.ndarray,
                    item_classes) -> RetrievalMetrics:
    """:func:`retrieval_metrics` of normalised query and item embeddings by cosine similarity,
    relevant where the classes are equal (the paper's text-to-audio and audio-to-text querying)."""
    q, x = np.asarray(query_embeddings, np.float64), np.asarray(item_embeddings, np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    relevant = np.asarray(query_classes)[:, None] == np.asarray(item_classes)[None, :]
    return retrieval_metrics(q @ x.T, relevant)
