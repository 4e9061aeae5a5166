"""The paper's querying metrics (AudioCLIP, Table 4): P@1, R@1 and mAP of ranked retrieval.

Every query ranks all candidates by score, highest first (ties keep the candidates' order). For a
query with ``R`` relevant candidates and relevance ``rel_k`` at rank ``k``:

- P@1: ``rel_1`` (the top result is relevant);
- R@1: ``rel_1 / R`` (the share of the relevant candidates found at rank 1);
- AP: ``(1 / R) * sum_k rel_k * precision@k``, the mean of the precisions at the ranks of the
  relevant candidates.

Each is averaged over the queries that have at least one relevant candidate (a class without clips
in the fold asks nothing). Two directions over a labelled set of clips: audio to text (a clip
queries the class texts; one is relevant) and text to audio (a class text queries the clips; its
clips are relevant).
"""

from __future__ import annotations

import numpy as np

METRICS = ("p_at_1", "r_at_1", "map")


def retrieval_metrics(scores, relevant) -> dict[str, float]:
    """``scores`` ``[Q, C]`` (higher is better) and ``relevant`` ``[Q, C]`` (bool): P@1, R@1 and mAP."""
    scores, relevant = np.asarray(scores, np.float64), np.asarray(relevant, bool)
    if scores.ndim != 2 or scores.shape != relevant.shape:
        raise ValueError(f"scores and relevant must be [queries, candidates] of one shape, got {scores.shape} "
                         f"and {relevant.shape}")
    asked = relevant.any(axis=1)
    if not asked.any():
        raise ValueError("no query has a relevant candidate")
    scores, relevant = scores[asked], relevant[asked]
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1).astype(np.float64)  # [Q, C] in rank order
    total = hits.sum(axis=1)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    ap = (precision * hits).sum(axis=1) / total
    return {"p_at_1": float(hits[:, 0].mean()), "r_at_1": float((hits[:, 0] / total).mean()), "map": float(ap.mean())}


def query_metrics(scores, labels, classes: int) -> dict[str, dict[str, float]]:
    """Both directions for clips with ``scores`` ``[N, classes]`` (a clip's score for each class text)
    and true class indices ``labels`` ``[N]``."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    relevant = labels[:, None] == np.arange(classes)[None, :]
    return {"audio_to_text": retrieval_metrics(scores, relevant),
            "text_to_audio": retrieval_metrics(scores.T, relevant.T)}
