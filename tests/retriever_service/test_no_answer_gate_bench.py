"""The no-answer gate benchmark's split and sweep, on made-up data (no dataset, no retriever)."""

from __future__ import annotations

import numpy as np

from bench import no_answer_gate as bench
from gateway import gate

# 10 topics of 4 to 8 passages; 3 questions per passage, one passage spans two.
PASSAGES = {f"t{t}-p{p}": f"t{t}" for t in range(10) for p in range(4 + t % 5)}
QUESTIONS = {f"{p}-q{i}": [p] for p in PASSAGES for i in range(3)}
QUESTIONS["t0-p0-q0"] = ["t0-p0", "t0-p1"]


def test_split_is_deterministic_and_seeded() -> None:
    one = bench.split_topics(PASSAGES, QUESTIONS, seed=1)
    again = bench.split_topics(PASSAGES, QUESTIONS, seed=1)
    assert one.stored_topics == again.stored_topics
    assert one.stored_passages == again.stored_passages
    assert one.kinds == again.kinds
    others = [bench.split_topics(PASSAGES, QUESTIONS, seed=s) for s in range(2, 6)]
    assert any(o.stored_passages != one.stored_passages for o in others)


def test_split_is_disjoint_and_has_the_three_kinds() -> None:
    split = bench.split_topics(PASSAGES, QUESTIONS, seed=7)
    assert len(split.stored_topics) == 5
    assert not split.stored_passages & split.withheld_passages
    stored_or_withheld = split.stored_passages | split.withheld_passages
    assert stored_or_withheld == {p for p, t in PASSAGES.items() if t in split.stored_topics}
    for topic in split.stored_topics:
        passages = [p for p, t in PASSAGES.items() if t == topic]
        kept = [p for p in passages if p in split.stored_passages]
        withheld = [p for p in passages if p in split.withheld_passages]
        assert kept
        assert withheld
        assert len(withheld) == max(1, round(len(passages) * bench.WITHHELD_PASSAGE_SHARE))
    for question, passages in QUESTIONS.items():
        kind = split.kinds[question]
        topic = PASSAGES[passages[0]]
        if kind == bench.ANSWERABLE:
            assert any(p in split.stored_passages for p in passages)
        elif kind == bench.STORED_UNANSWERABLE:
            assert topic in split.stored_topics
            assert not any(p in split.stored_passages for p in passages)
        else:
            assert kind == bench.NOT_STORED
            assert topic not in split.stored_topics
    counts = split.counts()
    assert all(counts[kind] > 0 for kind in bench.KINDS)
    assert sum(counts[kind] for kind in bench.KINDS) == len(QUESTIONS)


def row(text: str, kind: str, scores: list[float], texts: list[str], terms: list) -> dict:
    return {
        "id": text,
        "text": text,
        "kind": kind,
        "scores": scores,
        "texts": texts,
        "query_terms": terms,
        "collection_chunks": 50,
    }


def term(word: str, df: int, ranks: list[int]) -> dict:
    idf = float(np.log(1 + (50 - df + 0.5) / (df + 0.5)))
    return {
        "term": word,
        "document_frequency": df,
        "idf": idf,
        "in_results": bool(ranks),
        "result_ranks": ranks,
    }


ROWS = [
    row(
        "Which plateau is the Vistula on?",
        bench.NOT_STORED,
        [0.5, 0.4],
        ["The Rhine plateau.", "Rivers."],
        [term("plateau", 3, [1]), term("vistula", 0, [])],
    ),
    row(
        "Where does the Rhine rise?",
        bench.ANSWERABLE,
        [0.7, 0.3],
        ["The Rhine rises in the Alps.", "Rivers."],
        [term("rhine", 5, [1]), term("rise", 9, [1])],
    ),
    row(
        "Who named the Rhine?",
        bench.STORED_UNANSWERABLE,
        [0.45],
        ["The Rhine rises in the Alps."],
        [term("named", 0, []), term("rhine", 5, [1])],
    ),
]


def test_sweep_gates_compute_what_the_gateway_computes() -> None:
    f, kinds = bench.feature_table(ROWS)
    assert list(kinds) == [bench.NOT_STORED, bench.ANSWERABLE, bench.STORED_UNANSWERABLE]
    assert f["rarest_in_top3"].tolist() == [0.0, 1.0, 0.0]
    candidate = bench.Candidate("(c)", "idf_share", 0.8, "any", "nidf", 0.9, 0.3, 0.6)
    bench.check_same_as_gateway(candidate, ROWS)  # asserts equality with gateway.gate
    names = bench.Candidate("(c)", "idf_share", 0.8, "name", "nidf", 0.5, 0.3, 0.6)
    bench.check_same_as_gateway(names, ROWS)
    settings = candidate.settings()
    refused = [
        gate.refuses(r["text"], bench.hits_of(r), r["query_terms"], 50, settings) for r in ROWS
    ]
    assert refused == [True, False, True]
    by_family = bench.sweep(f, kinds)
    chosen = bench.choose(by_family)
    assert chosen.feasible is not None
    assert bench.tier(chosen.candidate.family) == 0  # cosine alone separates these two
