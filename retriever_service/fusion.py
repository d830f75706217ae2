"""Fuse a dense and a lexical ranking of the same candidates into one (hybrid search).

Both fusions read each candidate's two scores over the union of the two candidate lists, as
Pyserini's hybrid search does; a candidate that holds none of the query's terms has lexical score 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Fusion = Literal["rrf", "weighted"]
# The constant of reciprocal-rank fusion (Cormack, Clarke & Büttcher, 2009).
RRF_K = 60


def _ranks(scores: Mapping[str, float], *, positive_only: bool) -> dict[str, int]:
    ordered = sorted(
        (key for key, value in scores.items() if not positive_only or value > 0),
        key=lambda key: -scores[key],
    )
    return {key: rank for rank, key in enumerate(ordered, start=1)}


def _min_max(scores: Mapping[str, float]) -> dict[str, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    if high <= low:
        # One candidate, or all tied: nothing tells them apart on this side.
        return dict.fromkeys(scores, 1.0 if high > 0 else 0.0)
    return {key: (value - low) / (high - low) for key, value in scores.items()}


def fuse(
    dense: Mapping[str, float],
    lexical: Mapping[str, float],
    *,
    method: Fusion,
    dense_weight: float,
) -> dict[str, float]:
    """Return each candidate's fused score (higher is better).

    ``dense`` maps every candidate to its cosine similarity; ``lexical`` maps candidates to their
    BM25 score (missing or 0: no query term).
    ``weighted``: ``w·minmax(cosine) + (1−w)·minmax(bm25)``, in [0, 1].
    ``rrf``: ``w/(60+dense rank) + (1−w)/(60+lexical rank)``, in (0, 1/61]; a candidate without
    a query term gets no lexical share.
    """
    if not 0.0 <= dense_weight <= 1.0:
        raise ValueError("dense_weight must be between 0 and 1")
    candidates = set(dense) | set(lexical)
    bm25 = {key: max(lexical.get(key, 0.0), 0.0) for key in candidates}
    if method == "rrf":
        dense_ranks = _ranks(dense, positive_only=False)
        lexical_ranks = _ranks(bm25, positive_only=True)
        return {
            key: (dense_weight / (RRF_K + dense_ranks[key]) if key in dense_ranks else 0.0)
            + ((1.0 - dense_weight) / (RRF_K + lexical_ranks[key]) if key in lexical_ranks else 0.0)
            for key in candidates
        }
    if method == "weighted":
        dense_norm = _min_max({key: dense[key] for key in candidates if key in dense})
        lexical_norm = _min_max(bm25)
        return {
            key: dense_weight * dense_norm.get(key, 0.0)
            + (1.0 - dense_weight) * lexical_norm.get(key, 0.0)
            for key in candidates
        }
    raise ValueError(f"unknown fusion {method!r}")
