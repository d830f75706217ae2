"""Reciprocal-rank and min-max weighted fusion of dense and lexical scores."""

from __future__ import annotations

import pytest

from retriever_service.fusion import RRF_K, fuse

DENSE = {"a": 0.9, "b": 0.6, "c": 0.3}
LEXICAL = {"c": 12.0, "b": 3.0}


def order(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda k: -scores[k])


def test_rrf_adds_weighted_reciprocal_ranks() -> None:
    fused = fuse(DENSE, LEXICAL, method="rrf", dense_weight=0.5)
    assert fused["a"] == pytest.approx(0.5 / (RRF_K + 1))
    assert fused["b"] == pytest.approx(0.5 / (RRF_K + 2) + 0.5 / (RRF_K + 2))
    assert fused["c"] == pytest.approx(0.5 / (RRF_K + 3) + 0.5 / (RRF_K + 1))
    assert order(fused) == ["c", "b", "a"]
    assert all(0 < v <= 1 / (RRF_K + 1) for v in fused.values())


def test_weighted_fusion_min_max_normalizes_each_side() -> None:
    fused = fuse(DENSE, LEXICAL, method="weighted", dense_weight=0.5)
    # dense: a 1, b 0.5, c 0; lexical (a has none of the terms: 0): c 1, b 0.25, a 0.
    assert fused == pytest.approx({"a": 0.5, "b": 0.375, "c": 0.5})
    assert all(0 <= v <= 1 for v in fused.values())


@pytest.mark.parametrize("method", ["rrf", "weighted"])
def test_the_weight_moves_the_ranking_from_one_side_to_the_other(method: str) -> None:
    assert order(fuse(DENSE, LEXICAL, method=method, dense_weight=1.0))[0] == "a"
    assert order(fuse(DENSE, LEXICAL, method=method, dense_weight=0.0))[0] == "c"


def test_without_lexical_evidence_fusion_keeps_the_dense_order() -> None:
    for method in ("rrf", "weighted"):
        assert order(fuse(DENSE, {}, method=method, dense_weight=0.3)) == ["a", "b", "c"]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="dense_weight"):
        fuse(DENSE, LEXICAL, method="rrf", dense_weight=1.5)
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(DENSE, LEXICAL, method="sum", dense_weight=0.5)  # type: ignore[arg-type]
