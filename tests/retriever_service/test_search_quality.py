"""The sample help center, ingested with the ingestion CLI's code, answers paraphrased questions."""

from __future__ import annotations

import json
import statistics
from typing import Any

import pytest

from retriever_service.app import create_app
from retriever_service.config import RetrieverConfig
from retriever_service.ingest import IngestSummary, collect, run_ingest
from tests.conftest import DATA_DIR, FIXTURES_DIR

pytestmark = pytest.mark.slow

QUESTIONS = json.loads((FIXTURES_DIR / "sample_questions.json").read_text())


def client_sender(client: Any) -> Any:
    def send(batch: list[dict[str, Any]]) -> dict[str, Any]:
        response = client.post("/v1/documents", json={"documents": batch})
        assert response.status_code == 200, response.get_json()
        return response.get_json()

    return send


@pytest.fixture(scope="module")
def sample_kb(tmp_path_factory: pytest.TempPathFactory, embedder: Any) -> tuple[Any, IngestSummary]:
    chroma = tmp_path_factory.mktemp("sample-chroma")
    config = RetrieverConfig(chroma_path=str(chroma), chroma_host=None)
    app = create_app(config, embedder=embedder)
    client = app.test_client()
    summary = IngestSummary()
    documents = collect([str(DATA_DIR)], summary)
    run_ingest(documents, client_sender(client), summary, batch_size=16, progress=False)
    return client, summary


def top(client: Any, question: str, k: int = 3) -> list[dict[str, Any]]:
    response = client.post("/v1/search", json={"query": question, "top_k": k})
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"]


def test_sample_data_ingests_cleanly(sample_kb: tuple[Any, IngestSummary]) -> None:
    client, summary = sample_kb
    assert summary.problems == []
    assert summary.documents >= 40 + 5
    assert summary.statuses["created"] == summary.documents
    stats = client.get("/v1/stats").get_json()
    assert stats["documents"] == summary.documents
    assert stats["chunks"] == summary.chunks >= summary.documents
    # Every document id a question expects exists.
    for item in QUESTIONS["answerable"]:
        doc = client.get(f"/v1/documents/{item['document_id']}")
        assert doc.status_code == 200, item["document_id"]


def test_paraphrased_questions_find_their_document(
    sample_kb: tuple[Any, IngestSummary],
) -> None:
    """Every question's document is in the top 3, and the chunk holding its answer is near.

    Long guides are split into several chunks; for a few questions a neighbouring chunk of the
    right guide outranks the one holding the answer, so that chunk is required in the top 10
    and, for most questions, in the top 3.
    """
    client, _ = sample_kb
    answerable = QUESTIONS["answerable"]
    assert len(answerable) >= 40
    top1 = answer_top3 = 0
    misses = []
    for item in answerable:
        hits = top(client, item["question"], 10)
        ranked = [h["document_id"] for h in hits]
        top1 += ranked[0] == item["document_id"]
        if item["document_id"] not in ranked[:3]:
            misses.append(f"{item['question']!r}: expected {item['document_id']}, got {ranked[:3]}")
        answer_ranks = [
            rank
            for rank, h in enumerate(hits, start=1)
            if h["document_id"] == item["document_id"] and item["answer_contains"] in h["text"]
        ]
        if not answer_ranks:
            misses.append(
                f"{item['question']!r}: no top-10 chunk holds {item['answer_contains']!r}"
            )
        elif answer_ranks[0] <= 3:
            answer_top3 += 1
    rate, answer_rate = top1 / len(answerable), answer_top3 / len(answerable)
    summary = (
        f"top-1 document rate {rate:.2f} ({top1}/{len(answerable)}), answer chunk in top 3 "
        f"{answer_rate:.2f} ({answer_top3}/{len(answerable)})"
    )
    assert not misses, summary + "\n" + "\n".join(misses)
    assert rate >= 0.8, summary
    assert answer_rate >= 0.85, summary


def test_unanswerable_questions_score_lower(sample_kb: tuple[Any, IngestSummary]) -> None:
    client, _ = sample_kb
    answerable = [top(client, q["question"], 1)[0]["score"] for q in QUESTIONS["answerable"]]
    unanswerable = [top(client, q, 1)[0]["score"] for q in QUESTIONS["unanswerable"]]
    assert statistics.median(unanswerable) < statistics.median(answerable) - 0.1, (
        f"median best score: unanswerable {statistics.median(unanswerable):.3f}, "
        f"answerable {statistics.median(answerable):.3f}"
    )


def test_sample_data_second_ingest_changes_nothing(
    sample_kb: tuple[Any, IngestSummary],
) -> None:
    client, first = sample_kb
    before = client.get("/v1/stats").get_json()
    summary = IngestSummary()
    documents = collect([str(DATA_DIR)], summary)
    run_ingest(documents, client_sender(client), summary, progress=False)
    assert summary.documents == first.documents
    assert summary.statuses["unchanged"] == summary.documents
    assert summary.chunks == 0
    after = client.get("/v1/stats").get_json()
    assert (after["documents"], after["chunks"]) == (before["documents"], before["chunks"])
