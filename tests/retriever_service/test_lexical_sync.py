"""The lexical index follows the store when the store itself is wiped or replaced."""

from __future__ import annotations

from typing import Any

import pytest

from retriever_service.store import WRITE_LOG_COLLECTION

pytestmark = pytest.mark.slow


def found(client: Any, query: str) -> list[str]:
    response = client.post("/v1/search", json={"query": query, "mode": "lexical"})
    assert response.status_code == 200, response.get_json()
    return [h["document_id"] for h in response.get_json()["results"]]


def ingest(client: Any, doc_id: str, text: str) -> None:
    response = client.post("/v1/documents", json={"documents": [{"id": doc_id, "text": text}]})
    assert response.status_code == 200, response.get_json()


def test_a_wiped_store_is_followed_by_a_full_reconcile(make_app: Any) -> None:
    app = make_app()
    client = app.test_client()
    ingest(client, "a", "Alpha unit, code AA-1.")
    ingest(client, "b", "Beta unit, code BB-2.")
    assert found(client, "AA-1") == ["a"]
    # Someone restores an empty store under the running service (a new Chroma volume).
    store = app.extensions["knowledge_base"].store
    raw = store._get_client()
    for name in ("documents", WRITE_LOG_COLLECTION):
        raw.delete_collection(name)
        store.forget_collection(name)
    ingest(client, "c", "Gamma unit, code CC-3.")
    # One record now, fewer than this process had read: it reconciles in full.
    assert found(client, "AA-1") == []
    assert found(client, "CC-3") == ["c"]
    assert app.extensions["knowledge_base"].lexical.index.fingerprint("documents").keys() == {
        "c:0"
    }
