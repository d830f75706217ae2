"""Tests of the evaluation tool's metrics, dataset reader and reporting; no model is loaded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench.report import write_section
from retriever_service import evaluate as ev

LOG2_3 = math.log2(3)


# -- metrics ----------------------------------------------------------------------------------


def test_ndcg_is_one_when_the_relevant_document_ranks_first():
    assert ev.ndcg_at_k(["a", "b", "c"], {"a": 1}, 10) == pytest.approx(1.0)


def test_ndcg_discounts_a_relevant_document_at_rank_two():
    assert ev.ndcg_at_k(["b", "a"], {"a": 1}, 10) == pytest.approx(1 / LOG2_3)


def test_ndcg_uses_graded_gains():
    # DCG = 1/log2(2) + 2/log2(3); ideal = 2/log2(2) + 1/log2(3).
    expected = (1 + 2 / LOG2_3) / (2 + 1 / LOG2_3)
    assert ev.ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 10) == pytest.approx(expected)
    assert expected == pytest.approx(0.859719, abs=1e-6)


def test_ndcg_ideal_ranking_with_equal_grades_is_cut_at_k():
    # Three equally relevant documents, only two fit in k=2: the ideal holds two of them.
    judgements = {"a": 1, "b": 1, "c": 1}
    assert ev.ndcg_at_k(["a", "x"], judgements, 2) == pytest.approx(1 / (1 + 1 / LOG2_3))
    assert ev.ndcg_at_k(["c", "b"], judgements, 2) == pytest.approx(1.0)


def test_ndcg_ignores_zero_and_negative_grades():
    judgements = {"a": 1, "z": 0, "n": -1}
    assert ev.ndcg_at_k(["z", "n", "a"], judgements, 10) == pytest.approx(1 / 2)  # 1/log2(4)


def test_metrics_are_zero_when_no_relevant_document_is_retrieved():
    scores = ev.score_query(["x", "y", "z"], {"a": 1})
    assert scores == dict.fromkeys(ev.METRIC_KEYS, 0.0)


def test_metrics_are_zero_without_any_relevant_judgement():
    assert ev.score_query(["a"], {"a": 0}) == dict.fromkeys(ev.METRIC_KEYS, 0.0)


def test_a_relevant_document_past_the_cutoff_does_not_count():
    ranked = [f"d{i}" for i in range(10)] + ["a"]
    assert ev.ndcg_at_k(ranked, {"a": 1}, 10) == 0.0
    assert ev.recall_at_k(ranked, {"a": 1}, 10) == 0.0
    assert ev.mrr_at_k(ranked, {"a": 1}, 10) == 0.0
    assert ev.mrr_at_k(ranked, {"a": 1}, 11) == pytest.approx(1 / 11)


def test_recall_is_the_share_of_relevant_documents_found():
    judgements = {"a": 1, "b": 2}
    assert ev.recall_at_k(["x", "a", "y"], judgements, 5) == pytest.approx(0.5)
    assert ev.recall_at_k(["x", "a", "b"], judgements, 5) == pytest.approx(1.0)
    assert ev.recall_at_k(["x", "a", "b"], judgements, 1) == 0.0


def test_mrr_is_the_reciprocal_rank_of_the_first_relevant_document():
    judgements = {"a": 1, "b": 1}
    assert ev.mrr_at_k(["x", "y", "b", "a"], judgements, 10) == pytest.approx(1 / 3)


def test_a_document_listed_twice_counts_once_at_its_first_rank():
    assert ev.mrr_at_k(["x", "x", "a"], {"a": 1}, 10) == pytest.approx(1 / 2)
    assert ev.recall_at_k(["a", "a"], {"a": 1, "b": 1}, 2) == pytest.approx(0.5)


def test_mean_scores_averages_over_queries():
    means = ev.mean_scores([ev.score_query(["a"], {"a": 1}), ev.score_query(["x"], {"a": 1})])
    assert means == {key: pytest.approx(0.5) for key in ev.METRIC_KEYS}
    assert ev.mean_scores([]) == dict.fromkeys(ev.METRIC_KEYS, 0.0)


def test_rank_documents_keeps_each_documents_best_chunk():
    hits = [
        {"document_id": "d1", "score": 0.9},
        {"document_id": "d2", "score": 0.8},
        {"document_id": "d1", "score": 0.85},
        {"document_id": "d3", "score": 0.7},
    ]
    assert ev.rank_documents(hits) == ["d1", "d2", "d3"]


def test_rank_documents_keeps_the_service_order_on_equal_scores():
    hits = [
        {"document_id": "b", "score": 0.5},
        {"document_id": "a", "score": 0.5},
        {"document_id": "c", "score": 0.6},
    ]
    assert ev.rank_documents(hits) == ["c", "b", "a"]


def test_rank_documents_takes_the_maximum_even_when_hits_arrive_unsorted():
    hits = [{"document_id": "a", "score": 0.2}, {"document_id": "b", "score": 0.5}]
    hits.append({"document_id": "a", "score": 0.9})
    assert ev.rank_documents(hits) == ["a", "b"]


def test_percentile_ms_converts_seconds():
    assert ev.percentile_ms([0.010, 0.020, 0.030], 50) == pytest.approx(20.0)
    assert math.isnan(ev.percentile_ms([], 50))


# -- dataset reader ---------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list[Any]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_dataset(
    root: Path,
    *,
    qrels: dict[str, str] | None = None,
    corpus: list[Any] | None = None,
    queries: list[Any] | None = None,
) -> Path:
    """Write a tiny BEIR dataset: three documents, three queries, one qrels file."""
    root.mkdir(parents=True, exist_ok=True)
    _write_jsonl(
        root / "corpus.jsonl",
        corpus
        if corpus is not None
        else [
            {"_id": "d1", "title": "Paris", "text": "The capital of France."},
            {"_id": "d2", "title": "", "text": "Rome is in Italy."},
            {"_id": 3, "text": "Madrid lies in Spain."},
        ],
    )
    _write_jsonl(
        root / "queries.jsonl",
        queries
        if queries is not None
        else [
            {"_id": "q1", "text": "What is France's capital?"},
            {"_id": "q2", "text": "Where is Rome?"},
            {"_id": "q3", "text": "An unjudged question"},
        ],
    )
    (root / "qrels").mkdir(exist_ok=True)
    files = qrels or {"test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t3\t1\nq2\td2\t1\n"}
    for name, text in files.items():
        (root / "qrels" / name).write_text(text, encoding="utf-8")
    return root


def test_reads_a_beir_dataset(tmp_path):
    dataset = ev.load_dataset(make_dataset(tmp_path / "tiny"))
    assert dataset.name == "tiny"
    assert dataset.corpus == {
        "d1": "Paris The capital of France.",  # the title goes in front, as MTEB does
        "d2": "Rome is in Italy.",
        "3": "Madrid lies in Spain.",
    }
    assert dataset.queries["q2"] == "Where is Rome?"
    assert dataset.qrels == {"q1": {"d1": 2, "3": 1}, "q2": {"d2": 1}}
    assert dataset.judged_queries == ["q1", "q2"]
    assert dataset.notes == []


def test_queries_judged_only_not_relevant_are_not_evaluated(tmp_path):
    qrels = {"test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t0\n"}
    dataset = ev.load_dataset(make_dataset(tmp_path / "d", qrels=qrels))
    assert dataset.judged_queries == ["q1"]


def test_picks_the_split_then_the_only_file(tmp_path):
    header = "query-id\tcorpus-id\tscore\n"
    both = {"dev.tsv": header + "q2\td2\t1\n", "test.tsv": header + "q1\td1\t1\n"}
    folder = make_dataset(tmp_path / "both", qrels=both)
    assert ev.load_dataset(folder).qrels_path.name == "test.tsv"
    assert ev.load_dataset(folder, split="dev").qrels_path.name == "dev.tsv"

    only = make_dataset(tmp_path / "only", qrels={"validation.tsv": header + "q1\td1\t1\n"})
    dataset = ev.load_dataset(only)
    assert dataset.qrels_path.name == "validation.tsv"
    assert dataset.notes == []


def test_falls_back_to_the_first_of_several_files_with_a_note(tmp_path):
    header = "query-id\tcorpus-id\tscore\n"
    files = {"b.tsv": header + "q2\td2\t1\n", "a.tsv": header + "q1\td1\t1\n"}
    dataset = ev.load_dataset(make_dataset(tmp_path / "d", qrels=files))
    assert dataset.qrels_path.name == "a.tsv"
    assert "using a.tsv" in dataset.notes[0]


def test_a_judged_document_missing_from_the_corpus_is_a_note(tmp_path):
    qrels = {"test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tgone\t1\n"}
    dataset = ev.load_dataset(make_dataset(tmp_path / "d", qrels=qrels))
    assert "not in corpus.jsonl" in dataset.notes[0]
    assert dataset.qrels["q1"] == {"d1": 1, "gone": 1}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"corpus": ["not an object"]}, "must be a JSON object"),
        ({"corpus": [{"_id": "d1"}]}, "field 'text'"),
        ({"corpus": [{"_id": "d1", "text": "  "}]}, "field 'text'"),
        ({"corpus": [{"text": "no id"}]}, "field '_id'"),
        ({"corpus": [{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]}, "appears twice"),
        ({"corpus": []}, "holds no documents"),
        ({"queries": [{"_id": "q1", "text": 5}]}, "field 'text'"),
        ({"qrels": {"test.tsv": "query-id\tcorpus-id\tscore\nq1 d1 1\n"}}, "3 tab-separated"),
        ({"qrels": {"test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}}, "not a number"),
        ({"qrels": {"test.tsv": "query-id\tcorpus-id\tscore\nq9\td1\t1\n"}}, "not in queries"),
        ({"qrels": {"test.tsv": "query-id\tcorpus-id\tscore\n"}}, "no judgements"),
        ({"qrels": {"test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t0\n"}}, "no query has"),
        ({"qrels": {"notes.txt": "nothing"}}, "no .tsv"),
    ],
)
def test_malformed_datasets_are_rejected_with_the_reason(tmp_path, change, message):
    folder = make_dataset(tmp_path / "bad", **change)
    with pytest.raises(ev.DatasetError, match=message):
        ev.load_dataset(folder)


def test_a_line_that_is_not_json_is_named_by_file_and_line(tmp_path):
    folder = make_dataset(tmp_path / "bad")
    with (folder / "queries.jsonl").open("a") as handle:
        handle.write("{broken\n")
    with pytest.raises(ev.DatasetError, match=r"queries\.jsonl:4: not JSON"):
        ev.load_dataset(folder)


def test_missing_files_are_rejected(tmp_path):
    with pytest.raises(ev.DatasetError, match="not a directory"):
        ev.load_dataset(tmp_path / "nowhere")
    folder = make_dataset(tmp_path / "d")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(ev.DatasetError, match=r"corpus\.jsonl is missing"):
        ev.load_dataset(folder)


def test_the_command_exits_non_zero_on_a_malformed_dataset(tmp_path, capsys):
    folder = make_dataset(tmp_path / "bad", corpus=[{"_id": "d1"}])
    assert ev.main([str(folder), "--quiet"]) == 2
    assert "malformed dataset" in capsys.readouterr().err


def test_default_collection_is_a_valid_chroma_name():
    assert ev.default_collection("xquad-en") == "eval-xquad-en"
    assert ev.default_collection("my data (v2)") == "eval-my-data-v2"


# -- a run against a fake retriever -----------------------------------------------------------


class FakeRetriever:
    """Answers like the retriever API: each document is one chunk, search hits are scripted."""

    def __init__(self, answers: dict[str, list[tuple[str, float]]]) -> None:
        self.answers = answers
        self.ingested: list[dict[str, Any]] = []
        self.searches: list[dict[str, Any]] = []

    def ingest(self, documents, collection=None):
        self.ingested.extend(documents)
        return {"results": [{"id": d["id"], "status": "created", "chunks": 1} for d in documents]}

    def stats(self, collection=None):
        return {
            "documents": len(self.ingested),
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dtype": "float32",
            "max_chunk_tokens": 254,
            "chunk_overlap_tokens": 32,
            "store": "fake",
        }

    def search(self, query, *, top_k=5, **options):
        self.searches.append({"query": query, "top_k": top_k, **options})
        hits = [
            {"chunk_id": f"{doc}:{i}", "document_id": doc, "score": score}
            for i, (doc, score) in enumerate(self.answers[query])
        ]
        return {"results": hits, "took_ms": 1.0}


def test_evaluate_ingests_searches_and_scores_by_document(tmp_path):
    dataset = ev.load_dataset(make_dataset(tmp_path / "tiny"))
    fake = FakeRetriever(
        {
            # q1: d1 (grade 2) first, then 3 (grade 1) after a second chunk of d1.
            "What is France's capital?": [("d1", 0.9), ("d1", 0.8), ("3", 0.7)],
            # q2: its document only second.
            "Where is Rome?": [("d1", 0.6), ("d2", 0.5)],
        }
    )
    result = ev.evaluate(fake, dataset, "eval-tiny", top_k=50, progress=False)
    assert [d["id"] for d in fake.ingested] == ["d1", "d2", "3"]
    assert {s["collection"] for s in fake.searches} == {"eval-tiny"}
    assert {s["top_k"] for s in fake.searches} == {50}
    assert result.queries == 2  # q3 has no judgement
    assert result.chunks == 3
    assert result.metrics["ndcg@10"] == pytest.approx((1 + 1 / LOG2_3) / 2)
    assert result.metrics["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert result.metrics["recall@5"] == pytest.approx(1.0)
    assert result.metrics["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert "published" not in ev.render(result)  # no reference figures for this dataset


def _row(dtype: str, ndcg: float) -> dict[str, Any]:
    return {
        "dataset": "xquad-en",
        "settings": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dtype": dtype,
            "max_chunk_tokens": 254,
            "chunk_overlap_tokens": 32,
        },
        "metrics": dict.fromkeys(ev.METRIC_KEYS, 0.9) | {"ndcg@10": ndcg},
        "latency_p50_ms": 10.0,
        "latency_p99_ms": 20.0,
        "queries": 1190,
        "documents": 240,
        "chunks": 263,
    }


def test_docs_table_shows_published_figures_differences_and_the_dtype_verdict(tmp_path):
    rows = [_row("float32", 0.9471), _row("bfloat16", 0.9465)]
    markdown = ev.docs_markdown(rows, "Measured somewhere.")
    assert "0.9471 (+0.0035)" in markdown
    assert "| published | — | 0.9436 |" in markdown
    assert "difference -0.0006: within 0.001" in markdown
    # The rows survive a round trip through the file, so fp32 and bf16 runs accumulate.
    path = tmp_path / "benchmarks.md"
    write_section(ev.DOCS_SECTION, markdown, path=path)
    assert ev._stored_rows(path) == rows


def test_dtype_verdict_flags_a_gap_larger_than_the_tolerance():
    verdicts = ev._dtype_verdicts([_row("float32", 0.95), _row("bfloat16", 0.94)])
    assert "NOT within 0.001" in verdicts[0]
