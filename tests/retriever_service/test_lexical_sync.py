"""The lexical index follows the store when the store itself is wiped or replaced."""

from __future__ import annotations

from typing import Any

import pytest

from retriever_service.store import VERSIONS_COLLECTION, WRITE_LOG_COLLECTION
from retriever_service.versions import parse_chunk_id

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
    for name in ("documents", WRITE_LOG_COLLECTION, VERSIONS_COLLECTION):
        raw.delete_collection(name)
        store.forget_collection(name)
    ingest(client, "c", "Gamma unit, code CC-3.")
    # One record now, fewer than this process had read: it reconciles in full.
    assert found(client, "AA-1") == []
    assert found(client, "CC-3") == ["c"]
    [indexed] = app.extensions["knowledge_base"].lexical.index.fingerprint("documents")
    assert parse_chunk_id(indexed) is not None
    assert parse_chunk_id(indexed)[0] == "c"


def test_a_write_whose_log_record_failed_is_logged_by_the_next_search(make_app: Any) -> None:
    from qa_common.errors import DependencyUnavailable
    from retriever_service.store import ChromaStore, CollectionSpec

    class LogDown:
        """The real store, whose write log is unreachable once, right after a write."""

        def __init__(self, inner: ChromaStore) -> None:
            self.inner = inner
            self.fail_next_append = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def append_write_record(self, record_id: str, metadata: Any) -> None:
            if self.fail_next_append:
                self.fail_next_append = False
                raise DependencyUnavailable("the vector store cannot be reached")
            self.inner.append_write_record(record_id, metadata)

    probe = make_app()
    spec = CollectionSpec(probe.extensions["knowledge_base"].embedder.model_name, 384)
    store = LogDown(ChromaStore(spec, path=probe.extensions["retriever_config"].chroma_path))
    app = make_app(store=store)
    client = app.test_client()
    before = store.inner.write_record_count()
    store.fail_next_append = True
    response = client.post("/v1/documents", json={"documents": [{"id": "x", "text": "Code LD-4."}]})
    assert response.status_code == 503
    # The client retries: the document is stored already, so nothing is written or logged...
    ingest(client, "x", "Code LD-4.")
    assert store.inner.write_record_count() == before
    # ...but the record kept from the failed append goes out with the next search.
    assert found(client, "LD-4") == ["x"]
    assert store.inner.write_record_count() == before + 1
