"""The retriever's HTTP API on the real model and a real embedded Chroma in a tmp dir."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import pytest
import requests

from retriever_service.app import create_app
from retriever_service.config import DEFAULT_EMBEDDING_MODEL
from retriever_service.knowledge_base import default_document_id
from retriever_service.store import ChromaStore, CollectionSpec
from retriever_service.versions import parse_chunk_id
from tests.conftest import assert_error_envelope, error_fields, serve_app

WIFI = (
    "To connect the Halo thermostat to Wi-Fi, open the app and choose Add device. "
    "The thermostat only supports 2.4 GHz networks."
)
BATTERY = "The room sensor runs on a CR2477 coin battery that lasts about two years."
RETURNS = "You can return any thermostat within 60 days of delivery for a full refund."


def long_text(sentences: int = 120) -> str:
    topics = ["furnace", "compressor", "humidity", "schedule", "geofence", "filter", "display"]
    return " ".join(
        f"Paragraph note {i}: the {topics[i % len(topics)]} setting number {i} controls how the "
        f"thermostat behaves when the house is empty for {i % 9 + 1} hours."
        for i in range(sentences)
    )


def ingest(client: Any, *documents: dict[str, Any], status: int = 200, **extra: Any) -> Any:
    response = client.post("/v1/documents", json={"documents": list(documents), **extra})
    assert response.status_code == status, response.get_json()
    return response.get_json()


def search(client: Any, query: str, status: int = 200, **options: Any) -> Any:
    response = client.post("/v1/search", json={"query": query, **options})
    assert response.status_code == status, response.get_json()
    return response.get_json()


def stats(client: Any, collection: str | None = None) -> dict[str, Any]:
    url = "/v1/stats" + (f"?collection={collection}" if collection else "")
    response = client.get(url)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def chunk_ids_of(app: Any, document_id: str, collection: str = "documents") -> list[str]:
    store = app.extensions["knowledge_base"].store
    return sorted(c.id for c in store.get(collection, where={"_document_id": document_id}))


# -- ingestion --------------------------------------------------------------------------------


def test_ingest_reports_counts_and_search_finds_it(client: Any) -> None:
    body = ingest(
        client,
        {"id": "wifi", "text": WIFI},
        {"id": "battery", "text": BATTERY},
    )
    assert body["documents"] == 2
    assert body["chunks"] == 2
    assert body["created"] == 2
    assert body["updated"] == 0
    assert body["unchanged"] == 0
    assert body["collection"] == "documents"
    assert {r["id"]: r["status"] for r in body["results"]} == {
        "wifi": "created",
        "battery": "created",
    }
    hits = search(client, "which coin cell does the sensor take?", top_k=2)["results"]
    assert hits[0]["document_id"] == "battery"
    assert parse_chunk_id(hits[0]["chunk_id"]) is not None
    assert parse_chunk_id(hits[0]["chunk_id"])[0] == "battery"
    assert hits[0]["chunk_id"].endswith(":0")
    assert hits[0]["text"] == BATTERY
    assert hits[0]["score"] > hits[1]["score"]
    assert -1.0 <= hits[1]["score"] <= hits[0]["score"] <= 1.0


def test_posting_same_documents_twice_changes_nothing(app: Any, client: Any) -> None:
    docs = [{"id": "wifi", "text": WIFI}, {"id": "long", "text": long_text()}]
    first = ingest(client, *docs)
    before = stats(client)
    ids_before = chunk_ids_of(app, "long")
    second = ingest(client, *docs)
    assert (second["documents"], second["chunks"]) == (first["documents"], first["chunks"])
    assert second["unchanged"] == 2
    assert second["created"] == 0
    assert second["updated"] == 0
    assert [r["status"] for r in second["results"]] == ["unchanged", "unchanged"]
    after = stats(client)
    assert (after["documents"], after["chunks"]) == (before["documents"], before["chunks"])
    assert after["chunks"] == first["chunks"]
    assert chunk_ids_of(app, "long") == ids_before
    assert len(ids_before) > 2


def test_changed_text_replaces_all_chunks(app: Any, client: Any) -> None:
    first = ingest(client, {"id": "doc", "text": long_text(150)})
    assert first["chunks"] > 3
    second = ingest(client, {"id": "doc", "text": BATTERY})
    assert second["results"] == [{"id": "doc", "status": "updated", "chunks": 1}]
    # The old version's chunks are gone from the store, not only from results.
    [only] = chunk_ids_of(app, "doc")
    assert only.startswith("doc@")
    assert only.endswith(":0")
    assert stats(client)["chunks"] == 1
    hits = search(client, "furnace setting when the house is empty", top_k=10)["results"]
    assert [h["text"] for h in hits] == [BATTERY]


def test_changed_metadata_updates_in_place(client: Any) -> None:
    ingest(client, {"id": "doc", "text": WIFI, "metadata": {"lang": "en"}})
    body = ingest(client, {"id": "doc", "text": WIFI, "metadata": {"lang": "fr"}})
    assert body["updated"] == 1
    assert stats(client)["chunks"] == 1
    assert search(client, "wifi")["results"][0]["metadata"] == {"lang": "fr"}


def test_id_defaults_to_hash_of_text(client: Any) -> None:
    body = ingest(client, {"text": WIFI})
    [result] = body["results"]
    assert result["id"] == default_document_id(WIFI)
    again = ingest(client, {"text": WIFI})
    assert again["results"][0] == {
        "id": default_document_id(WIFI),
        "status": "unchanged",
        "chunks": 1,
    }
    other = ingest(client, {"text": BATTERY})
    assert other["results"][0]["id"] != result["id"]
    assert stats(client)["documents"] == 2


def test_metadata_round_trips_and_where_filters(client: Any) -> None:
    metadata = {"category": "pricing", "year": 2025, "score": 0.5, "public": True, "n": -3}
    ingest(
        client,
        {"id": "a", "text": WIFI, "metadata": metadata},
        {"id": "b", "text": BATTERY, "metadata": {"category": "hardware", "year": 2024}},
        {"id": "c", "text": RETURNS, "metadata": {"category": "pricing", "year": 2023}},
    )
    hit = next(
        h for h in search(client, "wifi network", top_k=3)["results"] if h["document_id"] == "a"
    )
    assert hit["metadata"] == metadata
    assert all(
        not k.startswith("_")
        for h in search(client, "x", top_k=3)["results"]
        for k in h["metadata"]
    )

    filtered = search(client, "coin battery", top_k=5, where={"category": "pricing"})["results"]
    assert {h["document_id"] for h in filtered} == {"a", "c"}
    ranged = search(client, "anything", top_k=5, where={"year": {"$gte": 2024}})["results"]
    assert {h["document_id"] for h in ranged} == {"a", "b"}
    combined = search(
        client,
        "anything",
        top_k=5,
        where={"$and": [{"category": "pricing"}, {"year": {"$lt": 2025}}]},
    )["results"]
    assert [h["document_id"] for h in combined] == ["c"]
    assert search(client, "anything", where={"category": "nothing"})["results"] == []


def test_get_document(client: Any) -> None:
    ingest(client, {"id": "doc", "text": WIFI, "metadata": {"k": "v"}})
    response = client.get("/v1/documents/doc")
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == "doc"
    assert body["chunks"] == 1
    assert body["metadata"] == {"k": "v"}
    assert body["chunk_texts"] == [WIFI]
    assert_error_envelope(client.get("/v1/documents/nope"), 404, "document_not_found")


def test_min_score_filters(client: Any) -> None:
    ingest(client, {"id": "wifi", "text": WIFI}, {"id": "battery", "text": BATTERY})
    everything = search(client, "which battery does the room sensor use", top_k=2)["results"]
    assert len(everything) == 2
    best, worst = everything[0]["score"], everything[1]["score"]
    assert best > worst
    threshold = (best + worst) / 2
    kept = search(client, "which battery does the room sensor use", top_k=2, min_score=threshold)[
        "results"
    ]
    assert [h["document_id"] for h in kept] == ["battery"]
    assert all(h["score"] >= threshold for h in kept)
    assert search(client, "battery", min_score=1.0)["results"] == []


def test_top_k_bounds_results(client: Any) -> None:
    docs = [
        {"id": f"d{i}", "text": f"Fact number {i}: the thermostat has feature {i}."}
        for i in range(12)
    ]
    ingest(client, *docs)
    assert len(search(client, "thermostat feature", top_k=1)["results"]) == 1
    assert len(search(client, "thermostat feature")["results"]) == 5
    assert len(search(client, "thermostat feature", top_k=50)["results"]) == 12
    dense = search(client, "thermostat feature", top_k=12, mode="dense")["results"]
    scores = [h["score"] for h in dense]
    assert scores == sorted(scores, reverse=True)
    # Hybrid (the default) orders by its fused score; ``score`` stays cosine.
    hybrid = search(client, "thermostat feature", top_k=12)["results"]
    fused = [h["fused_score"] for h in hybrid]
    assert fused == sorted(fused, reverse=True)
    cosine = {h["chunk_id"]: h["score"] for h in dense}
    assert {h["chunk_id"]: h["score"] for h in hybrid} == cosine


def test_search_on_empty_default_collection(client: Any) -> None:
    body = search(client, "anything at all")
    assert body["results"] == []
    assert body["took_ms"] >= 0


def test_search_response_fields(client: Any) -> None:
    ingest(client, {"id": "doc", "text": WIFI})
    body = search(client, "wifi")
    assert {"results", "took_ms"} <= set(body)
    [hit] = body["results"]
    assert {"chunk_id", "document_id", "text", "score", "metadata"} <= set(hit)
    assert (hit["start"], hit["end"], hit["position"]) == (0, len(WIFI), 0)


# -- delete -----------------------------------------------------------------------------------


def test_delete_document(app: Any, client: Any) -> None:
    ingest(client, {"id": "long", "text": long_text()}, {"id": "keep", "text": BATTERY})
    chunks = len(chunk_ids_of(app, "long"))
    assert chunks > 1
    response = client.delete("/v1/documents/long")
    assert response.status_code == 200
    assert response.get_json() == {"deleted_chunks": chunks, "id": "long"}
    assert chunk_ids_of(app, "long") == []
    assert stats(client)["documents"] == 1
    assert_error_envelope(client.delete("/v1/documents/long"), 404, "document_not_found")
    assert all(h["document_id"] == "keep" for h in search(client, "furnace", top_k=10)["results"])
    # Deleted, it can come back.
    assert ingest(client, {"id": "long", "text": long_text()})["created"] == 1


def test_delete_unknown_document_is_404(client: Any) -> None:
    # On a fresh service, before anything is stored, the answer names the document too.
    assert_error_envelope(client.delete("/v1/documents/never-was"), 404, "document_not_found")
    assert_error_envelope(client.get("/v1/documents/never-was"), 404, "document_not_found")
    ingest(client, {"id": "other", "text": WIFI})
    error = assert_error_envelope(
        client.delete("/v1/documents/never-was"), 404, "document_not_found"
    )
    assert "never-was" in error["message"]
    assert stats(client)["chunks"] == 1


@pytest.mark.parametrize("doc_id", ["guides/getting-started.md", "a/b/c", "with space", "ü/ñ:1"])
def test_document_ids_with_slashes_and_odd_characters(client: Any, doc_id: str) -> None:
    ingest(client, {"id": doc_id, "text": WIFI})
    assert search(client, "wifi")["results"][0]["document_id"] == doc_id
    url = "/v1/documents/" + quote(doc_id, safe="/")
    assert client.get(url).get_json()["id"] == doc_id
    response = client.delete(url)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["deleted_chunks"] == 1
    assert_error_envelope(client.delete(url), 404)


# -- stats, embed -----------------------------------------------------------------------------


def test_stats_counts(client: Any, embedder: Any) -> None:
    empty = stats(client)
    assert (empty["documents"], empty["chunks"]) == (0, 0)
    assert empty["model"] == DEFAULT_EMBEDDING_MODEL
    assert empty["dimension"] == 384
    assert empty["max_chunk_tokens"] == embedder.max_tokens
    body = ingest(client, {"id": "long", "text": long_text()}, {"id": "b", "text": BATTERY})
    full = stats(client)
    assert full["documents"] == 2
    assert full["chunks"] == body["chunks"] > 2


def test_embed_returns_unit_vectors(client: Any) -> None:
    texts = ["hello world", "the thermostat needs a C wire", "hello world"]
    response = client.post("/v1/embed", json={"texts": texts})
    assert response.status_code == 200
    body = response.get_json()
    assert body["dimension"] == 384
    vectors = body["embeddings"]
    assert len(vectors) == 3
    assert all(len(v) == 384 for v in vectors)
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, abs_tol=1e-4)
    assert vectors[0] == vectors[2]
    assert vectors[0] != vectors[1]


def test_embed_batch_is_bounded(make_app: Any) -> None:
    client = make_app(max_embed_texts=3).test_client()
    assert client.post("/v1/embed", json={"texts": ["a", "b", "c"]}).status_code == 200
    response = client.post("/v1/embed", json={"texts": ["a", "b", "c", "d"]})
    error = assert_error_envelope(response, 422, "validation_error")
    assert "texts" in error_fields(error)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"texts": []}, "texts"),
        ({"texts": [""]}, "texts.0"),
        ({"texts": "abc"}, "texts"),
        ({}, "texts"),
    ],
)
def test_embed_rejects_bad_input(client: Any, payload: Any, field: str) -> None:
    error = assert_error_envelope(client.post("/v1/embed", json=payload), 422)
    assert field in error_fields(error)


def test_too_many_documents_per_request(make_app: Any) -> None:
    client = make_app(max_documents_per_request=2).test_client()
    docs = [{"id": f"d{i}", "text": f"text {i}"} for i in range(3)]
    error = assert_error_envelope(client.post("/v1/documents", json={"documents": docs}), 422)
    assert "documents" in error_fields(error)
    assert stats(client)["chunks"] == 0


def test_too_long_text_is_422(make_app: Any) -> None:
    client = make_app(max_text_chars=1000).test_client()
    docs = [{"id": "ok", "text": "short"}, {"id": "big", "text": "word " * 300}]
    error = assert_error_envelope(client.post("/v1/documents", json={"documents": docs}), 422)
    assert "documents.1.text" in error_fields(error)
    assert stats(client)["chunks"] == 0


# -- collections ------------------------------------------------------------------------------


def test_collection_parameter(client: Any) -> None:
    ingest(client, {"id": "x", "text": WIFI})
    body = ingest(client, {"id": "x", "text": BATTERY}, collection="other-kb")
    assert body["collection"] == "other-kb"
    assert body["created"] == 1
    assert search(client, "wifi", collection="other-kb")["results"][0]["text"] == BATTERY
    assert search(client, "wifi")["results"][0]["text"] == WIFI
    assert stats(client, "other-kb")["documents"] == 1
    names = client.get("/v1/collections").get_json()["collections"]
    assert {"documents", "other-kb"} <= set(names)
    assert client.delete("/v1/documents/x?collection=other-kb").get_json()["deleted_chunks"] == 1
    assert stats(client)["documents"] == 1
    assert client.delete("/v1/collections/other-kb").status_code == 200
    assert_error_envelope(client.delete("/v1/collections/other-kb"), 404, "collection_not_found")


def test_unknown_collection_is_404(client: Any) -> None:
    assert_error_envelope(
        client.post("/v1/search", json={"query": "q", "collection": "nope-kb"}),
        404,
        "collection_not_found",
    )
    assert_error_envelope(client.get("/v1/stats?collection=nope-kb"), 404, "collection_not_found")
    assert_error_envelope(client.delete("/v1/documents/x?collection=nope-kb"), 404)
    # Searching did not create it.
    assert "nope-kb" not in client.get("/v1/collections").get_json()["collections"]


@pytest.mark.parametrize("name", ["ab", "-bad-", "has space", "x" * 513, "a/b"])
def test_invalid_collection_name_is_422(client: Any, name: str) -> None:
    for response in (
        client.post("/v1/search", json={"query": "q", "collection": name}),
        client.post("/v1/documents", json={"documents": [{"text": "t"}], "collection": name}),
    ):
        error = assert_error_envelope(response, 422, "validation_error")
        assert "collection" in error_fields(error)


def test_embedding_model_mismatch_is_409(make_app: Any, make_config: Any) -> None:
    config = make_config()
    other = ChromaStore(CollectionSpec("someone/other-model", 384), path=config.chroma_path)
    other.ensure_collection("foreign-kb", create=True)
    client = make_app().test_client()
    error = assert_error_envelope(
        client.post(
            "/v1/documents", json={"documents": [{"text": WIFI}], "collection": "foreign-kb"}
        ),
        409,
        "embedding_model_mismatch",
    )
    assert "someone/other-model" in error["message"]
    assert_error_envelope(
        client.post("/v1/search", json={"query": "wifi", "collection": "foreign-kb"}), 409
    )
    assert other.count("foreign-kb") == 0


# -- probes -----------------------------------------------------------------------------------


def test_healthz_readyz_metrics(client: Any) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.get_json()
    assert body["status"] == "ready"
    assert body["model"] == DEFAULT_EMBEDDING_MODEL
    search(client, "warm the counters")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert (
        'http_requests_total{endpoint="search",method="POST",service="retriever",status="200"} 1.0'
        in text
    )
    assert 'endpoint="readyz"' in text


def test_request_id_is_echoed(client: Any) -> None:
    response = client.post("/v1/search", json={"query": "x"}, headers={"X-Request-ID": "rid-7"})
    assert response.headers["X-Request-ID"] == "rid-7"


def test_readyz_503_when_model_failed_to_load(make_config: Any) -> None:
    app = create_app(make_config(embedding_model="/nonexistent/model/path"))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    error = assert_error_envelope(client.get("/readyz"), 503, "not_ready")
    assert "not loaded" in error["message"] or "Not ready" in error["message"]
    assert_error_envelope(client.post("/v1/search", json={"query": "x"}), 503, "not_ready")


# -- concurrency ------------------------------------------------------------------------------


def test_concurrent_posts_of_the_same_documents_do_not_duplicate(app: Any) -> None:
    docs = [{"id": "long", "text": long_text(60)}, {"id": "b", "text": BATTERY}]
    with serve_app(app) as url, ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(requests.post, url + "/v1/documents", json={"documents": docs}, timeout=120)
            for _ in range(4)
        ]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200] * 4
    statuses = sorted(r.json()["created"] for r in responses)
    assert statuses == [0, 0, 0, 2], "exactly one request creates, the others find them unchanged"
    chunks = {r.json()["chunks"] for r in responses}
    assert len(chunks) == 1
    body = app.test_client().get("/v1/stats").get_json()
    assert (body["documents"], body["chunks"]) == (2, chunks.pop())
