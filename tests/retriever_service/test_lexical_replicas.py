"""Lexical and hybrid search stay consistent across retriever replicas on one Chroma server.

Each replica is its own app with its own lexical index, as two pods would be; they share only a
real ``chroma run`` server. A write acknowledged by one must be searchable by words on the other
from the very next search, and a delete must be gone from it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from retriever_service.knowledge_base import DocumentInput
from tests.conftest import ChromaServer, assert_error_envelope

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def replicas(make_app: Any, chroma_server: ChromaServer) -> tuple[Any, Any]:
    apps = [
        make_app(chroma_host="127.0.0.1", chroma_port=chroma_server.port, lexical_reconcile_s=1.0)
        for _ in range(2)
    ]
    a, b = apps
    assert a.extensions["knowledge_base"].lexical is not b.extensions["knowledge_base"].lexical
    return a.test_client(), b.test_client()


def ingest(client: Any, *docs: dict[str, Any], collection: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"documents": list(docs)}
    if collection:
        body["collection"] = collection
    response = client.post("/v1/documents", json=body)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def found(client: Any, query: str, mode: str = "lexical", **options: Any) -> list[str]:
    response = client.post("/v1/search", json={"query": query, "mode": mode, **options})
    assert response.status_code == 200, response.get_json()
    return [h["document_id"] for h in response.get_json()["results"]]


def test_a_write_on_one_replica_is_found_by_words_on_the_other(replicas: tuple[Any, Any]) -> None:
    a, b = replicas
    ingest(a, {"id": "old", "text": "The legacy thermostat model is the HT-100."})
    # B has searched before the write, so its index is loaded and must catch up, not rebuild.
    assert found(b, "HT-100") == ["old"]
    ingest(a, {"id": "new", "text": "The ZX-9000 sensor pairs over Thread."})
    assert found(b, "ZX-9000") == ["new"]
    assert found(b, "ZX-9000", mode="hybrid", top_k=1) == ["new"]

    ingest(a, {"id": "new", "text": "The QY-1234 sensor pairs over Thread."})
    assert found(b, "ZX-9000") == []
    assert found(b, "QY-1234") == ["new"]

    assert b.delete("/v1/documents/new").status_code == 200
    assert found(a, "QY-1234") == []
    assert "new" not in found(a, "QY-1234 sensor", mode="hybrid", top_k=5)
    assert found(a, "HT-100") == ["old"]


def test_concurrent_writes_through_both_replicas_are_all_seen_by_both(
    replicas: tuple[Any, Any],
) -> None:
    a, b = replicas
    ingest(a, {"id": "seed", "text": "Seed document about the QZ-0 code."})
    assert found(a, "QZ-0") == found(b, "QZ-0") == ["seed"]
    errors: list[BaseException] = []

    def writer(client: Any, side: str) -> None:
        try:
            for i in range(8):
                ingest(
                    client,
                    {"id": f"{side}{i}", "text": f"Unit {side}{i} reports code QZ-{side}{i}."},
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(c, s)) for c, s in ((a, "a"), (b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert not errors, errors
    for client in (a, b):
        for side in "ab":
            for i in range(8):
                assert found(client, f"QZ-{side}{i}") == [f"{side}{i}"]


def test_every_replica_index_equals_what_chroma_holds(replicas: tuple[Any, Any]) -> None:
    a, b = replicas
    ingest(a, *({"id": f"d{i}", "text": f"Document {i} about code KC-{i}."} for i in range(6)))
    assert b.delete("/v1/documents/d3").status_code == 200
    ingest(b, {"id": "d4", "text": "Document four, rewritten without its code."})
    for client in (a, b):
        found(client, "code")  # catch up
        kb = client.application.extensions["knowledge_base"]
        stored = {
            c.id: str(c.metadata["_content_hash"])
            for page in kb.store.scan_metadata("documents")
            for c in page
        }
        assert kb.lexical.index.fingerprint("documents") == stored


def test_a_dropped_collection_is_dropped_on_every_replica(replicas: tuple[Any, Any]) -> None:
    a, b = replicas
    ingest(a, {"id": "x", "text": "Old contents: code OC-1."}, collection="shared-col")
    assert found(b, "OC-1", collection="shared-col") == ["x"]
    assert a.delete("/v1/collections/shared-col").status_code == 200
    assert_error_envelope(
        b.post("/v1/search", json={"query": "OC-1", "mode": "lexical", "collection": "shared-col"}),
        404,
    )
    ingest(a, {"id": "y", "text": "New contents: code NC-2."}, collection="shared-col")
    assert found(b, "OC-1", collection="shared-col") == []
    assert found(b, "NC-2", collection="shared-col") == ["y"]


def test_a_write_that_was_never_logged_is_reconciled(replicas: tuple[Any, Any]) -> None:
    """A writer killed between its write and its log record: reconciliation still finds it."""
    a, b = replicas
    ingest(a, {"id": "logged", "text": "Logged write with code LG-1."})
    assert found(b, "LG-1") == ["logged"]
    # Write through A's knowledge base without the log record, as a killed writer would leave it.
    kb = a.application.extensions["knowledge_base"]
    unlogged = DocumentInput(text="Unlogged write with code UL-7.", id="unlogged")
    hashes = [kb.content_hash(unlogged)]
    records, _ = kb._write_chunks("documents", [unlogged], ["unlogged"], hashes, [0])
    kb._commit("documents", records)
    deadline = time.monotonic() + 30
    while found(b, "UL-7") != ["unlogged"]:
        assert time.monotonic() < deadline, "the background reconciliation never found it"
        time.sleep(0.3)
