"""Tests of the evaluation tool's metrics, dataset reader, runner and reporting; no model is
loaded: the retriever is a scripted fake."""

from __future__ import annotations

import ast
import json
import math
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import retriever_service
from bench import retrieval_quality as rq
from bench.report import write_section
from qa_common.errors import DownstreamError
from retriever_service import evaluate as cli
from retriever_service.evaluation import dataset as ds
from retriever_service.evaluation import metrics as mt
from retriever_service.evaluation import report as rp
from retriever_service.evaluation import runner as rn

LOG2_3 = math.log2(3)


# -- metrics ----------------------------------------------------------------------------------


def test_ndcg_is_one_when_the_relevant_document_ranks_first():
    assert mt.ndcg_at_k(["a", "b", "c"], {"a": 1}, 10) == pytest.approx(1.0)


def test_ndcg_discounts_a_relevant_document_at_rank_two():
    assert mt.ndcg_at_k(["b", "a"], {"a": 1}, 10) == pytest.approx(1 / LOG2_3)


def test_ndcg_uses_graded_gains():
    # DCG = 1/log2(2) + 2/log2(3); ideal = 2/log2(2) + 1/log2(3).
    expected = (1 + 2 / LOG2_3) / (2 + 1 / LOG2_3)
    assert mt.ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 10) == pytest.approx(expected)
    assert expected == pytest.approx(0.859719, abs=1e-6)


def test_ndcg_ideal_ranking_with_equal_grades_is_cut_at_k():
    # Three equally relevant documents, only two fit in k=2: the ideal holds two of them.
    judgements = {"a": 1, "b": 1, "c": 1}
    assert mt.ndcg_at_k(["a", "x"], judgements, 2) == pytest.approx(1 / (1 + 1 / LOG2_3))
    assert mt.ndcg_at_k(["c", "b"], judgements, 2) == pytest.approx(1.0)


def test_ndcg_ignores_zero_and_negative_grades():
    judgements = {"a": 1, "z": 0, "n": -1}
    assert mt.ndcg_at_k(["z", "n", "a"], judgements, 10) == pytest.approx(1 / 2)  # 1/log2(4)


def test_metrics_are_zero_when_no_relevant_document_is_retrieved():
    scores = mt.score_query(["x", "y", "z"], {"a": 1})
    assert scores == dict.fromkeys(mt.METRIC_KEYS, 0.0)


def test_metrics_are_zero_without_any_relevant_judgement():
    assert mt.score_query(["a"], {"a": 0}) == dict.fromkeys(mt.METRIC_KEYS, 0.0)


def test_a_relevant_document_past_the_cutoff_does_not_count():
    ranked = [f"d{i}" for i in range(10)] + ["a"]
    assert mt.ndcg_at_k(ranked, {"a": 1}, 10) == 0.0
    assert mt.recall_at_k(ranked, {"a": 1}, 10) == 0.0
    assert mt.mrr_at_k(ranked, {"a": 1}, 10) == 0.0
    assert mt.mrr_at_k(ranked, {"a": 1}, 11) == pytest.approx(1 / 11)


def test_recall_is_the_share_of_relevant_documents_found():
    judgements = {"a": 1, "b": 2}
    assert mt.recall_at_k(["x", "a", "y"], judgements, 5) == pytest.approx(0.5)
    assert mt.recall_at_k(["x", "a", "b"], judgements, 5) == pytest.approx(1.0)
    assert mt.recall_at_k(["x", "a", "b"], judgements, 1) == 0.0


def test_mrr_is_the_reciprocal_rank_of_the_first_relevant_document():
    judgements = {"a": 1, "b": 1}
    assert mt.mrr_at_k(["x", "y", "b", "a"], judgements, 10) == pytest.approx(1 / 3)


def test_a_document_listed_twice_counts_once_at_its_first_rank():
    assert mt.mrr_at_k(["x", "x", "a"], {"a": 1}, 10) == pytest.approx(1 / 2)
    assert mt.recall_at_k(["a", "a"], {"a": 1, "b": 1}, 2) == pytest.approx(0.5)


def test_mean_scores_averages_over_queries():
    means = mt.mean_scores([mt.score_query(["a"], {"a": 1}), mt.score_query(["x"], {"a": 1})])
    assert means == {key: pytest.approx(0.5) for key in mt.METRIC_KEYS}
    assert mt.mean_scores([]) == dict.fromkeys(mt.METRIC_KEYS, 0.0)


def test_rank_documents_keeps_each_documents_first_chunk():
    hits = [
        {"document_id": "d1", "score": 0.9},
        {"document_id": "d2", "score": 0.8},
        {"document_id": "d1", "score": 0.85},
        {"document_id": "d3", "score": 0.7},
    ]
    assert mt.rank_documents(hits) == ["d1", "d2", "d3"]


def test_rank_documents_keeps_the_service_order_on_equal_scores():
    hits = [
        {"document_id": "b", "score": 0.5},
        {"document_id": "a", "score": 0.5},
        {"document_id": "c", "score": 0.6},
    ]
    # Result order, not score: c came last, so it ranks last although its cosine is highest.
    assert mt.rank_documents(hits) == ["b", "a", "c"]


def test_rank_documents_follows_result_order_not_the_cosine_score():
    # A lexical or hybrid answer: ranked by BM25 or the fused score, "score" is still cosine.
    hits = [
        {"document_id": "a", "score": 0.2, "lexical_score": 9.1, "fused_score": 0.03},
        {"document_id": "b", "score": 0.9, "lexical_score": 4.0, "fused_score": 0.02},
        {"document_id": "a", "score": 0.95, "lexical_score": 1.0, "fused_score": 0.01},
        {"document_id": "c", "score": 0.99, "lexical_score": None, "fused_score": 0.005},
    ]
    assert mt.rank_documents(hits) == ["a", "b", "c"]
    assert mt.rank_documents([]) == []


def test_percentile_ms_converts_seconds():
    assert mt.percentile_ms([0.010, 0.020, 0.030], 50) == pytest.approx(20.0)
    assert math.isnan(mt.percentile_ms([], 50))


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
    dataset = ds.load_dataset(make_dataset(tmp_path / "tiny"))
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
    dataset = ds.load_dataset(make_dataset(tmp_path / "d", qrels=qrels))
    assert dataset.judged_queries == ["q1"]


def test_picks_the_split_then_the_only_file(tmp_path):
    header = "query-id\tcorpus-id\tscore\n"
    both = {"dev.tsv": header + "q2\td2\t1\n", "test.tsv": header + "q1\td1\t1\n"}
    folder = make_dataset(tmp_path / "both", qrels=both)
    assert ds.load_dataset(folder).qrels_path.name == "test.tsv"
    assert ds.load_dataset(folder, split="dev").qrels_path.name == "dev.tsv"

    only = make_dataset(tmp_path / "only", qrels={"validation.tsv": header + "q1\td1\t1\n"})
    dataset = ds.load_dataset(only)
    assert dataset.qrels_path.name == "validation.tsv"
    assert dataset.notes == []


def test_falls_back_to_the_first_of_several_files_with_a_note(tmp_path):
    header = "query-id\tcorpus-id\tscore\n"
    files = {"b.tsv": header + "q2\td2\t1\n", "a.tsv": header + "q1\td1\t1\n"}
    dataset = ds.load_dataset(make_dataset(tmp_path / "d", qrels=files))
    assert dataset.qrels_path.name == "a.tsv"
    assert "using a.tsv" in dataset.notes[0]


def test_a_judged_document_missing_from_the_corpus_is_a_note(tmp_path):
    qrels = {"test.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\tgone\t1\n"}
    dataset = ds.load_dataset(make_dataset(tmp_path / "d", qrels=qrels))
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
    with pytest.raises(ds.DatasetError, match=message):
        ds.load_dataset(folder)


def test_a_line_that_is_not_json_is_named_by_file_and_line(tmp_path):
    folder = make_dataset(tmp_path / "bad")
    with (folder / "queries.jsonl").open("a") as handle:
        handle.write("{broken\n")
    with pytest.raises(ds.DatasetError, match=r"queries\.jsonl:4: not JSON"):
        ds.load_dataset(folder)


def test_missing_files_are_rejected(tmp_path):
    with pytest.raises(ds.DatasetError, match="not a directory"):
        ds.load_dataset(tmp_path / "nowhere")
    folder = make_dataset(tmp_path / "d")
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(ds.DatasetError, match=r"corpus\.jsonl is missing"):
        ds.load_dataset(folder)


def test_the_command_exits_non_zero_on_a_malformed_dataset(tmp_path, capsys):
    folder = make_dataset(tmp_path / "bad", corpus=[{"_id": "d1"}])
    assert cli.main([str(folder), "--quiet"]) == 2
    assert "malformed dataset" in capsys.readouterr().err


def test_default_collection_is_a_valid_chroma_name():
    assert ds.default_collection("xquad-en") == "eval-xquad-en"
    assert ds.default_collection("my data (v2)") == "eval-my-data-v2"


# -- the dev/test split of the queries --------------------------------------------------------


def test_the_dev_test_split_is_disjoint_covering_and_keeps_the_order():
    ids = [f"q{i}" for i in range(1000)]
    dev, test = ds.select_queries(ids, "dev"), ds.select_queries(ids, "test")
    assert not set(dev) & set(test)
    assert sorted(dev + test) == sorted(ids)
    assert dev == [q for q in ids if q in set(dev)]
    assert test == [q for q in ids if q in set(test)]
    assert ds.select_queries(ids, "all") == ids
    assert 400 < len(dev) < 600  # about half each


def test_the_dev_test_split_is_deterministic_and_depends_on_each_id_only():
    ids = [f"q{i}" for i in range(1000)]
    dev = set(ds.select_queries(ids, "dev"))
    assert set(ds.select_queries(ids, "dev")) == dev
    # Fewer, reordered queries: each keeps its half.
    subset = list(reversed(ids[::7]))
    assert ds.select_queries(subset, "dev") == [q for q in subset if q in dev]
    # Pinned: a changed hash or seed would make earlier dev/test figures incomparable.
    assert ds.SPLIT_SEED == "retriever-eval-split-v1"
    assert [ds.query_half(q) for q in ("q1", "q2", "q3")] == ["test", "dev", "test"]
    assert set(ds.select_queries(ids, "dev", seed="another seed")) != dev


def test_an_unknown_query_split_is_rejected():
    with pytest.raises(ValueError, match="unknown query split"):
        ds.select_queries(["q1"], "train")


# -- a run against a fake retriever -----------------------------------------------------------

Hits = list[tuple[str, float]]


class FakeRetriever:
    """Answers like the retriever API: each document is one chunk, search hits are scripted.

    ``by_mode`` scripts answers per search mode; a mode without a script gets ``answers``.
    """

    def __init__(
        self,
        answers: dict[str, Hits],
        *,
        by_mode: dict[str, dict[str, Hits]] | None = None,
        collections: tuple[str, ...] = (),
        fail_search: Exception | None = None,
        hybrid_defaults: tuple[str, float] | None = None,
    ) -> None:
        self.answers = answers
        self.by_mode = by_mode or {}
        self.collections = set(collections)
        self.fail_search = fail_search
        self.hybrid_defaults = hybrid_defaults
        self.ingested: list[dict[str, Any]] = []
        self.searches: list[dict[str, Any]] = []
        self.deleted: list[str] = []

    def request_json(self, method, path, **kwargs):
        assert (method, path) == ("GET", "/v1/collections")
        return {"collections": sorted(self.collections)}

    def ingest(self, documents, collection=None):
        self.collections.add(collection)
        self.ingested.extend(documents)
        return {"results": [{"id": d["id"], "status": "created", "chunks": 1} for d in documents]}

    def stats(self, collection=None):
        return {
            "documents": len(self.ingested) or 7,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dtype": "float32",
            "max_chunk_tokens": 254,
            "chunk_overlap_tokens": 32,
            "store": "fake",
        }

    def delete_collection(self, name):
        self.deleted.append(name)
        self.collections.discard(name)
        return {"deleted": name}

    def search(self, query, *, top_k=5, **options):
        self.searches.append({"query": query, "top_k": top_k, **options})
        if self.fail_search is not None:
            raise self.fail_search
        script = self.by_mode.get(options.get("mode"), self.answers)
        hits = [
            {"chunk_id": f"{doc}:{i}", "document_id": doc, "score": score}
            for i, (doc, score) in enumerate(script[query])
        ]
        response: dict[str, Any] = {"results": hits, "took_ms": 1.0}
        if self.hybrid_defaults and options.get("mode") == "hybrid":
            # A hybrid-capable retriever echoes the fusion and weight it used.
            fusion, weight = self.hybrid_defaults
            response |= {
                "fusion": options.get("fusion", fusion),
                "dense_weight": options.get("dense_weight", weight),
            }
        return response


Q1, Q2 = "What is France's capital?", "Where is Rome?"
TINY_ANSWERS = {
    # q1: d1 (grade 2) first, then 3 (grade 1) after a second chunk of d1.
    Q1: [("d1", 0.9), ("d1", 0.8), ("3", 0.7)],
    # q2: its document only second.
    Q2: [("d1", 0.6), ("d2", 0.5)],
}


def test_evaluate_ingests_searches_and_scores_by_document(tmp_path):
    dataset = ds.load_dataset(make_dataset(tmp_path / "tiny"))
    fake = FakeRetriever(TINY_ANSWERS)
    result = rn.evaluate(
        fake, dataset, "eval-tiny", settings=rn.mode_settings(["dense"]), top_k=50, progress=False
    )
    assert [d["id"] for d in fake.ingested] == ["d1", "d2", "3"]
    assert {s["collection"] for s in fake.searches} == {"eval-tiny"}
    assert {s["top_k"] for s in fake.searches} == {50}
    assert result.queries == 2  # q3 has no judgement
    assert result.chunks == 3
    metrics = result.run("dense").metrics
    assert metrics["ndcg@10"] == pytest.approx((1 + 1 / LOG2_3) / 2)
    assert metrics["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert metrics["recall@5"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert "published" not in rp.render(result)  # no reference figures for this dataset


def test_evaluate_ingests_once_and_scores_each_mode_by_its_result_order(tmp_path):
    dataset = ds.load_dataset(make_dataset(tmp_path / "tiny"))
    fake = FakeRetriever(
        TINY_ANSWERS,
        by_mode={
            "dense": {Q1: [("d1", 0.9), ("3", 0.7)], Q2: [("d2", 0.8)]},
            # BM25 order; the cosine in "score" would put d1 first, result order puts it second.
            "lexical": {Q1: [("d2", 0.1), ("d1", 0.9), ("3", 0.8)], Q2: [("d2", 0.3)]},
        },
    )
    settings = rn.mode_settings(["dense", "lexical", "hybrid"], fusion="weighted", dense_weight=0.3)
    result = rn.evaluate(fake, dataset, "eval-tiny", settings=settings, progress=False)

    assert len(fake.ingested) == 3
    assert [r.label for r in result.runs] == ["dense", "lexical", "hybrid (weighted, w=0.3)"]
    assert result.run("dense").metrics["mrr@10"] == pytest.approx(1.0)
    assert result.run("lexical").metrics["mrr@10"] == pytest.approx((0.5 + 1) / 2)
    assert result.run("hybrid (weighted, w=0.3)").metrics["mrr@10"] == pytest.approx(0.75)
    # The fusion options go to hybrid only; dense and lexical name their mode alone.
    options = [
        {k: s[k] for k in s if k not in ("query", "top_k", "collection")} for s in fake.searches
    ]
    assert options[:3] == [
        {"mode": "dense"},
        {"mode": "lexical"},
        {"mode": "hybrid", "fusion": "weighted", "dense_weight": 0.3},
    ]
    # One untimed warm-up search per mode, then the modes take turns on each query.
    assert len(fake.searches) == 3 * (1 + 2)
    assert [s["mode"] for s in fake.searches[3:]] == ["dense", "lexical", "hybrid"] * 2
    assert [s["query"] for s in fake.searches[3:]] == [Q1] * 3 + [Q2] * 3


def test_hybrid_without_options_leaves_fusion_and_weight_to_the_server():
    assert rn.mode_settings(["hybrid"]) == [rn.SearchSetting("hybrid")]
    assert rn.SearchSetting("hybrid").options() == {"mode": "hybrid"}
    assert rn.SearchSetting("hybrid").label == "hybrid"
    assert rn.SearchSetting("hybrid", "rrf").label == "hybrid (rrf)"
    assert rn.mode_settings(["dense", "dense"]) == [rn.SearchSetting("dense")]
    with pytest.raises(ValueError, match="unknown search modes"):
        rn.mode_settings(["bm25"])


def test_hybrid_settings_left_to_the_server_are_recorded_from_its_answer(tmp_path):
    dataset = ds.load_dataset(make_dataset(tmp_path / "tiny"))
    fake = FakeRetriever(TINY_ANSWERS, hybrid_defaults=("rrf", 0.5))
    settings = [rn.SearchSetting("dense"), rn.SearchSetting("hybrid")]
    settings.append(rn.SearchSetting("hybrid", "weighted", 0.7))
    result = rn.evaluate(fake, dataset, "c", settings=settings, progress=False)
    assert [r.label for r in result.runs] == [
        "dense",
        "hybrid (rrf, w=0.5, default)",
        "hybrid (weighted, w=0.7)",
    ]
    assert (result.runs[1].fusion, result.runs[1].dense_weight) == ("rrf", 0.5)
    assert {"fusion", "dense_weight"}.isdisjoint(fake.searches[1])  # nothing asked for


def test_evaluate_searches_only_the_chosen_half_of_the_queries(tmp_path):
    dataset = ds.load_dataset(make_dataset(tmp_path / "tiny"))
    fake = FakeRetriever(TINY_ANSWERS)
    settings = rn.mode_settings(["dense"])
    result = rn.evaluate(fake, dataset, "c", settings=settings, query_split="dev", progress=False)
    assert (result.query_split, result.queries, result.judged_queries) == ("dev", 1, 2)
    assert result.split_seed == ds.SPLIT_SEED
    assert {s["query"] for s in fake.searches} == {Q2}  # q2 is in dev, q1 in test
    assert "dev half: 1 of 2 judged queries (split seed 'retriever-eval-split-v1')" in rp.render(
        result
    )


def test_the_sweep_runs_each_fusion_at_each_dense_weight(tmp_path):
    sweep = rn.sweep_settings()
    assert len(sweep) == 18
    assert {s.fusion for s in sweep} == {"rrf", "weighted"}
    assert sorted({s.dense_weight for s in sweep}) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    dataset = ds.load_dataset(make_dataset(tmp_path / "tiny"))
    fake = FakeRetriever(TINY_ANSWERS)
    result = rn.evaluate(
        fake, dataset, "c", settings=rn.mode_settings(["dense"]), sweep=sweep, progress=False
    )
    assert [r.label for r in result.runs] == ["dense"]
    assert len(result.sweep) == 18
    sent = {(s.get("fusion"), s.get("dense_weight")) for s in fake.searches if "fusion" in s}
    assert sent == {(s.fusion, s.dense_weight) for s in sweep}


# -- never touching a collection the run did not create ---------------------------------------


def test_an_existing_collection_is_refused_without_reuse(tmp_path):
    dataset = ds.load_dataset(make_dataset(tmp_path / "tiny"))
    fake = FakeRetriever(TINY_ANSWERS, collections=("eval-tiny",))
    with (
        pytest.raises(rn.CollectionExists, match="--reuse") as caught,
        rn.evaluation_collection(fake, "eval-tiny"),
    ):
        rn.evaluate(fake, dataset, "eval-tiny", progress=False)
    assert caught.value.documents == 7
    assert fake.ingested == []
    assert fake.searches == []
    assert fake.deleted == []


def test_a_reused_collection_is_kept():
    fake = FakeRetriever({}, collections=("eval-tiny",))
    with rn.evaluation_collection(fake, "eval-tiny", reuse=True) as created:
        assert created is False
    assert fake.deleted == []


def test_a_collection_the_run_created_is_deleted_even_when_the_run_fails():
    fake = FakeRetriever({}, collections=("someone-elses",))
    with rn.evaluation_collection(fake, "eval-tiny") as created:
        assert created is True
    assert fake.deleted == ["eval-tiny"]
    with pytest.raises(RuntimeError), rn.evaluation_collection(fake, "eval-tiny"):
        raise RuntimeError("the run failed")
    assert fake.deleted == ["eval-tiny", "eval-tiny"]
    with rn.evaluation_collection(fake, "eval-tiny", keep=True):
        pass
    assert fake.deleted == ["eval-tiny", "eval-tiny"]


@pytest.fixture
def fake_client(monkeypatch):
    """Make ``--url`` runs of the command talk to a fake retriever; return a setter for it."""
    holder: dict[str, FakeRetriever] = {}

    def use(fake: FakeRetriever) -> FakeRetriever:
        holder["fake"] = fake
        return fake

    monkeypatch.setattr(cli, "RetrieverClient", lambda url: holder["fake"])
    return use


def test_the_command_refuses_an_existing_collection(tmp_path, capsys, fake_client):
    folder = make_dataset(tmp_path / "tiny")
    fake = fake_client(FakeRetriever(TINY_ANSWERS, collections=("eval-tiny",)))
    assert cli.main([str(folder), "--url", "http://fake", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "'eval-tiny' is already on the retriever (it holds 7 documents)" in err
    assert "--reuse" in err
    assert (fake.ingested, fake.searches, fake.deleted) == ([], [], [])

    assert cli.main([str(folder), "--url", "http://fake", "--quiet", "--reuse"]) == 0
    assert fake.deleted == []
    assert "eval-tiny" in fake.collections


def test_the_command_deletes_only_the_collection_it_created(tmp_path, capsys, fake_client):
    folder = make_dataset(tmp_path / "tiny")
    fake = fake_client(FakeRetriever(TINY_ANSWERS, collections=("other",)))
    assert cli.main([str(folder), "--url", "http://fake", "--quiet"]) == 0
    assert fake.deleted == ["eval-tiny"]
    assert fake.collections == {"other"}
    assert cli.main([str(folder), "--url", "http://fake", "--quiet", "--keep"]) == 0
    assert fake.deleted == ["eval-tiny"]
    assert "eval-tiny" in fake.collections


def test_a_retriever_without_search_modes_is_named_as_the_reason(tmp_path, capsys, fake_client):
    folder = make_dataset(tmp_path / "tiny")
    rejected = DownstreamError(
        422,
        "validation_error",
        "The request body is invalid.",
        [{"field": "mode", "message": "Extra inputs are not permitted"}],
    )
    fake = fake_client(FakeRetriever(TINY_ANSWERS, fail_search=rejected))
    assert cli.main([str(folder), "--url", "http://fake", "--quiet"]) == 1
    assert "predates hybrid search" in capsys.readouterr().err
    assert fake.deleted == ["eval-tiny"]  # created by this run, so cleaned up after the failure


@pytest.mark.parametrize(
    "options",
    [
        ["--modes", "dense,bm25"],
        ["--modes", ""],
        ["--dense-weight", "1.5"],
        ["--dense-weight", "half"],
        ["--fusion", "max"],
        ["--queries", "train"],
        ["--reuse"],  # a temporary retriever has nothing to reuse
        ["--top-k", "5"],
    ],
)
def test_bad_options_are_usage_errors(tmp_path, options):
    with pytest.raises(SystemExit) as caught:
        cli.main([str(make_dataset(tmp_path / "tiny")), *options])
    assert caught.value.code == 2


# -- terminal report --------------------------------------------------------------------------


def _mode_result(label: str, ndcg: float, p50: float = 12.0) -> rn.ModeResult:
    mode, _, rest = label.partition(" ")
    fusion = weight = None
    if rest:
        fusion, _, w = rest.strip("()").partition(", w=")
        weight = float(w)
    return rn.ModeResult(
        mode=mode,
        fusion=fusion,
        dense_weight=weight,
        label=label,
        metrics=dict.fromkeys(mt.METRIC_KEYS, 0.9) | {"ndcg@10": ndcg},
        latency_p50_ms=p50,
        latency_p99_ms=30.0,
        server_p50_ms=8.0,
    )


def _result(split: str = "all", **changes: Any) -> rn.EvalResult:
    values: dict[str, Any] = {
        "dataset": "xquad-en",
        "collection": "eval-xquad-en",
        "documents": 240,
        "chunks": 263,
        "qrels": "validation.tsv",
        "query_split": split,
        "split_seed": ds.SPLIT_SEED,
        "queries": 1190 if split == "all" else 600,
        "judged_queries": 1190,
        "ingest_s": 12.3,
        "settings": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dtype": "float32",
            "max_chunk_tokens": 254,
            "chunk_overlap_tokens": 32,
        },
        "runs": [
            _mode_result("dense", 0.9471, 11.0),
            _mode_result("lexical", 0.9012, 4.0),
            _mode_result("hybrid (rrf, w=0.5)", 0.9555, 13.0),
        ],
    }
    return rn.EvalResult(**(values | changes))


def _cells_after(text: str, label: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(label + " "))
    return line[len(label) :].split()


def test_render_puts_the_modes_side_by_side():
    text = rp.render(_result())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("mode "))
    assert header.split() == ["mode", *mt.METRIC_KEYS, "p50", "ms", "p99", "ms"]
    rows = [line.split()[0] for line in lines[lines.index(header) + 1 :][:4]]
    assert rows == ["dense", "lexical", "hybrid", "published"]
    assert _cells_after(text, "dense") == ["0.9471", *["0.9000"] * 4, "11.0", "30.0"]
    assert _cells_after(text, "hybrid (rrf, w=0.5)") == ["0.9555", *["0.9000"] * 4, "13.0", "30.0"]
    assert _cells_after(text, "published (dense)") == [
        "0.9436",
        "0.8852",
        "0.9814",
        "0.9899",
        "0.9281",
    ]
    # The columns line up: each number ends where its header does.
    dense = next(line for line in lines if line.startswith("dense "))
    assert header.index("ndcg@10") + len("ndcg@10") == dense.index("0.9471") + len("0.9471")
    assert len(header) == len(dense)
    assert "queries:    all 1190 judged queries" in text
    # Recall@10 0.9 vs the published 0.9899 is the largest gap.
    assert "dense vs published" in text
    assert "largest difference 0.0899 (NOT within 0.02)" in text


def test_render_holds_only_a_dense_run_on_all_queries_against_the_published_figures():
    test_half = rp.render(_result("test"))
    assert "published" not in test_half
    assert (
        "test half: 600 of 1190 judged queries (split seed 'retriever-eval-split-v1')" in test_half
    )
    no_dense = rp.render(_result(runs=[_mode_result("lexical", 0.9)]))
    assert "published" not in no_dense


def test_render_sweep_shows_ndcg_per_fusion_and_weight_and_the_best():
    sweep = [
        _mode_result(f"hybrid ({fusion}, w={w:g})", ndcg)
        for fusion, score in (
            ("rrf", lambda w: 0.90 + w / 100),
            ("weighted", lambda w: 0.95 - abs(w - 0.6) / 10),
        )
        for w in rn.SWEEP_WEIGHTS
        for ndcg in [score(w)]
    ]
    text = rp.render_sweep(_result("dev", sweep=sweep))
    lines = text.splitlines()
    assert lines[0] == (
        "hybrid sweep: nDCG@10 on dev half: 600 of 1190 judged queries "
        "(split seed 'retriever-eval-split-v1')"
    )
    assert lines[1].split() == ["fusion"] + [f"w={w:g}" for w in rn.SWEEP_WEIGHTS]
    assert lines[2].split()[0] == "rrf"
    assert lines[2].split()[1:3] == ["0.9010", "0.9020"]
    assert lines[3].split()[0] == "weighted"
    assert lines[3].split()[6] == "0.9500"
    assert lines[-1] == "best: fusion weighted, dense_weight 0.6 (nDCG@10 0.9500)"
    assert rp.render_sweep(_result()) == ""


def test_the_command_prints_the_table_and_the_sweep(tmp_path, capsys, fake_client):
    folder = make_dataset(tmp_path / "tiny")
    fake_client(FakeRetriever(TINY_ANSWERS))
    assert cli.main([str(folder), "--url", "http://fake", "--quiet", "--sweep"]) == 0
    out = capsys.readouterr().out
    assert "hybrid sweep: nDCG@10 on all 2 judged queries" in out
    for label in ("dense", "lexical", "hybrid"):
        assert any(line.startswith(label + " ") for line in out.splitlines())


# -- JSON results and the docs table (bench) --------------------------------------------------


def test_a_result_survives_a_json_round_trip_with_nan_as_null():
    result = _result(sweep=[_mode_result("hybrid (rrf, w=0.1)", 0.9, float("nan"))])
    data = json.loads(json.dumps(result.to_dict()))
    assert data["sweep"][0]["latency_p50_ms"] is None
    back = rn.EvalResult.from_dict(data)
    assert back.runs == result.runs
    assert math.isnan(back.sweep[0].latency_p50_ms)
    assert back.settings == result.settings


def test_json_out_feeds_the_docs_table(tmp_path, capsys, fake_client, monkeypatch):
    folder = make_dataset(tmp_path / "tiny")
    fake_client(FakeRetriever(TINY_ANSWERS))
    out = tmp_path / "result.json"
    args = [str(folder), "--url", "http://fake", "--quiet", "--queries", "test"]
    assert cli.main([*args, "--json-out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["label"] for r in data["runs"]] == ["dense", "lexical", "hybrid"]
    assert (data["query_split"], data["queries"]) == ("test", 1)

    docs = tmp_path / "benchmarks.md"
    monkeypatch.setattr(rq, "BENCHMARKS_MD", docs)
    assert rq.main(["--from-json", str(out)]) == 0
    rows = rq.stored_rows(docs)
    assert [(r["mode"], r["query_split"], r["queries"]) for r in rows] == [
        ("dense", "test", 1),
        ("lexical", "test", 1),
        ("hybrid", "test", 1),
    ]


def test_the_bench_runs_each_dataset_and_writes_one_row_per_mode(
    tmp_path, fake_client, monkeypatch
):
    fake_client(FakeRetriever(TINY_ANSWERS))
    docs = tmp_path / "benchmarks.md"
    monkeypatch.setattr(rq, "BENCHMARKS_MD", docs)
    folders = [str(make_dataset(tmp_path / name)) for name in ("one", "two")]
    assert rq.main([*folders, "--url", "http://fake", "--quiet", "--modes", "dense,hybrid"]) == 0
    rows = rq.stored_rows(docs)
    assert [(r["dataset"], r["mode"]) for r in rows] == [
        ("one", "dense"),
        ("one", "hybrid"),
        ("two", "dense"),
        ("two", "hybrid"),
    ]
    assert "BEGIN retriever-eval" in docs.read_text()


def test_the_bench_writes_nothing_when_a_dataset_fails(tmp_path, capsys, monkeypatch):
    docs = tmp_path / "benchmarks.md"
    monkeypatch.setattr(rq, "BENCHMARKS_MD", docs)
    bad = make_dataset(tmp_path / "bad", corpus=[{"_id": "d1"}])
    assert rq.main([str(bad), "--quiet"]) == 2
    assert not docs.exists()
    with pytest.raises(SystemExit):
        rq.main([])  # neither a dataset nor a result file


def _row(dtype: str, ndcg: float, mode: str = "dense", split: str = "all") -> dict[str, Any]:
    return {
        "dataset": "xquad-en",
        "settings": {
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "dtype": dtype,
            "max_chunk_tokens": 254,
            "chunk_overlap_tokens": 32,
        },
        "mode": mode,
        "query_split": split,
        "metrics": dict.fromkeys(mt.METRIC_KEYS, 0.9) | {"ndcg@10": ndcg},
        "latency_p50_ms": 10.0,
        "latency_p99_ms": 20.0,
        "queries": 1190,
        "documents": 240,
        "chunks": 263,
    }


def test_docs_table_shows_published_figures_differences_and_the_dtype_verdict(tmp_path):
    rows = [_row("float32", 0.9471), _row("bfloat16", 0.9465)]
    markdown = rq.docs_markdown(rows, "Measured somewhere.")
    assert "0.9471 (+0.0035)" in markdown
    assert "| published | — | dense | all | 0.9436 |" in markdown
    assert "difference -0.0006: within 0.001" in markdown
    # The rows survive a round trip through the file, so fp32 and bf16 runs accumulate.
    path = tmp_path / "benchmarks.md"
    write_section(rq.DOCS_SECTION, markdown, path=path)
    assert rq.stored_rows(path) == rows


def test_dtype_verdict_flags_a_gap_larger_than_the_tolerance():
    verdicts = rq.dtype_verdicts([_row("float32", 0.95), _row("bfloat16", 0.94)])
    assert "NOT within 0.001" in verdicts[0]


def test_docs_table_compares_only_dense_rows_on_all_queries_with_the_published_figures():
    rows = [_row("float32", 0.91, "lexical"), _row("float32", 0.95, "dense", "test")]
    markdown = rq.docs_markdown(rows, "M.")
    assert "(+" not in markdown
    assert "(-" not in markdown
    assert "| published |" not in markdown


def test_rows_from_before_search_modes_read_as_dense_on_all_queries(tmp_path):
    old = {k: v for k, v in _row("float32", 0.9471).items() if k not in ("mode", "query_split")}
    path = tmp_path / "benchmarks.md"
    write_section(rq.DOCS_SECTION, f"old table\n<!-- data: {json.dumps([old])} -->", path=path)
    (row,) = rq.stored_rows(path)
    assert (row["mode"], row["query_split"]) == ("dense", "all")
    # A new dense run with the same settings replaces it; other modes are added beside it.
    merged = rq.merge_rows([row], [_row("float32", 0.95), _row("float32", 0.93, "hybrid")])
    assert [(r["mode"], r["metrics"]["ndcg@10"]) for r in merged] == [
        ("dense", 0.95),
        ("hybrid", 0.93),
    ]


# -- the runtime packages stand alone ---------------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _module_files(package_dir: Path, package: str) -> dict[str, Path]:
    files = {package: package_dir / "__init__.py"}
    for info in pkgutil.walk_packages([str(package_dir)], prefix=f"{package}."):
        folder = Path(info.module_finder.path)  # type: ignore[union-attr]
        leaf = info.name.rsplit(".", 1)[-1]
        files[info.name] = folder / leaf / "__init__.py" if info.ispkg else folder / f"{leaf}.py"
    return files


def test_no_module_under_retriever_service_imports_bench():
    # The Docker image leaves bench/ out, so such an import fails only there.
    files = _module_files(Path(retriever_service.__file__).parent, "retriever_service")
    assert "retriever_service.evaluate" in files
    assert "retriever_service.evaluation.runner" in files
    offenders = {
        name: sorted(m for m in _imported_modules(path) if m == "bench" or m.startswith("bench."))
        for name, path in files.items()
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_import_check_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "m.py"
    source.write_text(
        "import bench.report\n"
        "from bench import report\n"
        "def f():\n"
        "    from bench.report import write_section\n"
        "    importlib.import_module('bench.x')\n"
        "from . import sibling\n"
    )
    assert _imported_modules(source) == {"bench.report", "bench", "bench.x"}


def test_evaluate_sends_the_internal_key_it_finds_in_the_environment(
    tmp_path: Path, make_app: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from tests.conftest import serve_app

    dataset = make_dataset(tmp_path / "tiny")
    argv = [str(dataset), "--modes", "dense", "--quiet"]
    with serve_app(make_app(internal_api_key="eval-key-5b")) as url:
        monkeypatch.delenv("INTERNAL_API_KEY", raising=False)
        assert cli.main([*argv, "--url", url]) == 1
        assert "INTERNAL_API_KEY" in capsys.readouterr().err  # the refusal says what to send
        monkeypatch.setenv("INTERNAL_API_KEY", "eval-key-5b")
        assert cli.main([*argv, "--url", url]) == 0
    assert "ndcg@10" in capsys.readouterr().out.lower()
