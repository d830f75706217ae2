"""Score document rankings against graded judgements: nDCG, recall, MRR and latency."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

METRIC_KEYS = ("ndcg@10", "recall@1", "recall@5", "recall@10", "mrr@10")


def relevant(judgements: Mapping[str, int]) -> set[str]:
    """Return the documents judged relevant (grade above zero)."""
    return {doc for doc, grade in judgements.items() if grade > 0}


def _unique(ranked: Iterable[str]) -> list[str]:
    # A document listed twice counts once, at its first (best) rank.
    return list(dict.fromkeys(ranked))


def ndcg_at_k(ranked: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Return nDCG@k with graded gains (linear gain, log2 discount, as trec_eval's ndcg_cut)."""
    gains = [max(judgements.get(doc, 0), 0) for doc in _unique(ranked)[:k]]
    dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))
    ideal = sorted((g for g in judgements.values() if g > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Return the share of the relevant documents found in the top k."""
    wanted = relevant(judgements)
    if not wanted:
        return 0.0
    return len(wanted.intersection(_unique(ranked)[:k])) / len(wanted)


def mrr_at_k(ranked: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Return 1/rank of the first relevant document in the top k, or 0 when none is there."""
    wanted = relevant(judgements)
    for rank, doc in enumerate(_unique(ranked)[:k], start=1):
        if doc in wanted:
            return 1.0 / rank
    return 0.0


def score_query(ranked: Sequence[str], judgements: Mapping[str, int]) -> dict[str, float]:
    """Return every reported metric for one query."""
    return {
        "ndcg@10": ndcg_at_k(ranked, judgements, 10),
        "recall@1": recall_at_k(ranked, judgements, 1),
        "recall@5": recall_at_k(ranked, judgements, 5),
        "recall@10": recall_at_k(ranked, judgements, 10),
        "mrr@10": mrr_at_k(ranked, judgements, 10),
    }


def mean_scores(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-query metrics over queries."""
    if not per_query:
        return dict.fromkeys(METRIC_KEYS, 0.0)
    return {key: float(np.mean([scores[key] for scores in per_query])) for key in METRIC_KEYS}


def rank_documents(hits: Iterable[Mapping[str, Any]]) -> list[str]:
    """Turn chunk hits into a document ranking, each document at its first chunk."""
    # The service returns hits best first by the ranking of the mode asked for (cosine, BM25 or
    # fused); "score" is always the cosine similarity, so sorting on it would undo that ranking.
    return _unique(str(hit["document_id"]) for hit in hits)


def percentile_ms(samples_s: Sequence[float], q: float) -> float:
    """Return a latency percentile in milliseconds."""
    return float(np.percentile(np.asarray(samples_s) * 1000, q)) if samples_s else float("nan")
