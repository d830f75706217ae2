"""A write that fails halfway leaves the previous version intact and no new chunks behind.

The store is the REAL embedded ChromaStore, wrapped so that one chosen call fails after doing
part of its work, as a store that dies mid-write would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from qa_common.errors import DependencyUnavailable
from retriever_service.store import ChromaStore, CollectionSpec, StoredChunk
from tests.conftest import assert_error_envelope

SHORT = "The room sensor takes a CR2477 coin battery."


def long_text(tag: str, sentences: int = 120) -> str:
    return " ".join(
        f"{tag} note {i}: the furnace setting number {i} controls how the thermostat behaves "
        f"when the house is empty for {i % 9 + 1} hours."
        for i in range(sentences)
    )


class FailingStore:
    """Delegates to a real ChromaStore; the next ``upsert`` or ``delete`` can be made to fail."""

    def __init__(self, inner: ChromaStore) -> None:
        self.inner = inner
        self.fail_upsert_after: int | None = None  # chunks written before the failure
        self.fail_next_delete = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upsert(self, collection: str, chunks: Sequence[StoredChunk]) -> None:
        self.calls.append(f"upsert:{len(chunks)}")
        if self.fail_upsert_after is not None:
            written, self.fail_upsert_after = self.fail_upsert_after, None
            self.inner.upsert(collection, list(chunks)[:written])
            raise DependencyUnavailable("injected: store died mid-upsert", dependency="chroma")
        self.inner.upsert(collection, chunks)

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        self.calls.append(f"delete:{len(ids)}")
        if self.fail_next_delete and ids:
            self.fail_next_delete = False
            self.calls.append("failed")
            raise DependencyUnavailable("injected: store died on delete", dependency="chroma")
        self.inner.delete(collection, ids)


@pytest.fixture
def failing(make_config: Any, embedder: Any) -> FailingStore:
    config = make_config()
    spec = CollectionSpec(embedding_model=embedder.model_name, dimension=embedder.dimension)
    return FailingStore(ChromaStore(spec, path=config.chroma_path))


@pytest.fixture
def fclient(make_app: Any, failing: FailingStore) -> Any:
    return make_app(store=failing).test_client()


def snapshot(store: FailingStore, collection: str = "documents") -> dict[str, tuple[str, Any]]:
    """Every chunk in the collection: id → (text, content hash)."""
    chunks = store.inner.get(collection, where={"_position": {"$gte": 0}}, with_content=True)
    return {c.id: (c.text, c.metadata["_content_hash"]) for c in chunks}


def post(client: Any, *docs: dict[str, Any]) -> Any:
    return client.post("/v1/documents", json={"documents": list(docs)})


def test_failed_first_write_leaves_nothing(fclient: Any, failing: FailingStore) -> None:
    post(fclient, {"id": "other", "text": SHORT})
    before = snapshot(failing)
    failing.fail_upsert_after = 2
    response = post(fclient, {"id": "new", "text": long_text("new")})
    assert_error_envelope(response, 503, "dependency_unavailable")
    assert snapshot(failing) == before
    # Nothing of "new" is left; a retry writes it whole.
    retry = post(fclient, {"id": "new", "text": long_text("new")})
    assert retry.status_code == 200
    assert retry.get_json()["results"][0]["status"] == "created"
    assert len(snapshot(failing)) == len(before) + retry.get_json()["chunks"]


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (long_text("old"), SHORT),  # shrinking: stale chunks must come back
        (SHORT, long_text("new")),  # growing: extra chunks must go away
        (long_text("old"), long_text("new", 100)),
    ],
    ids=["long-to-short", "short-to-long", "long-to-long"],
)
def test_failed_upsert_keeps_previous_version(
    fclient: Any, failing: FailingStore, old: str, new: str
) -> None:
    assert (
        post(fclient, {"id": "doc", "text": old}, {"id": "keep", "text": "Other."}).status_code
        == 200
    )
    before = snapshot(failing)
    failing.fail_upsert_after = 1
    response = post(fclient, {"id": "doc", "text": new}, {"id": "added", "text": "Brand new."})
    assert_error_envelope(response, 503, "dependency_unavailable")
    assert snapshot(failing) == before
    assert not any(i.startswith("added:") for i in snapshot(failing))

    # The previous version is whole and searchable, and posting the new one again works.
    got = fclient.get("/v1/documents/doc").get_json()
    assert "".join(got["chunk_texts"]).startswith(old[:40])
    again = post(fclient, {"id": "doc", "text": new})
    assert again.status_code == 200
    assert again.get_json()["results"][0]["status"] == "updated"
    texts = fclient.get("/v1/documents/doc").get_json()["chunk_texts"]
    assert texts[0].startswith(new[:40])
    assert len(texts) == again.get_json()["chunks"]


def test_failed_delete_of_stale_chunks_keeps_previous_version(
    fclient: Any, failing: FailingStore
) -> None:
    assert post(fclient, {"id": "doc", "text": long_text("old")}).status_code == 200
    before = snapshot(failing)
    assert len(before) > 2
    failing.fail_next_delete = True
    response = post(fclient, {"id": "doc", "text": SHORT})
    assert_error_envelope(response, 503, "dependency_unavailable")
    assert "failed" in failing.calls
    assert snapshot(failing) == before

    again = post(fclient, {"id": "doc", "text": SHORT})
    assert again.status_code == 200
    assert again.get_json()["results"] == [{"id": "doc", "status": "updated", "chunks": 1}]
    assert list(snapshot(failing)) == ["doc:0"]


def test_unchanged_check_does_not_trust_a_partial_document(
    fclient: Any, failing: FailingStore
) -> None:
    """A crash can leave part of a document behind; re-posting it must repair, not skip it."""
    doc = {"id": "doc", "text": long_text("v1")}
    assert post(fclient, doc).status_code == 200
    # Simulate a crash that left only some chunks of the next version behind.
    inner = failing.inner
    stored = inner.get("documents", where={"_document_id": "doc"})
    inner.delete("documents", [c.id for c in stored[1:]])
    again = post(fclient, doc)
    assert again.status_code == 200
    assert again.get_json()["results"][0]["status"] == "updated"
    assert len(snapshot(failing)) == again.get_json()["chunks"] == len(stored)


def test_embedding_failure_leaves_store_untouched(
    make_app: Any, failing: FailingStore, embedder: Any
) -> None:
    class BrokenEmbedder:
        def __init__(self) -> None:
            self.broken = False

        def __getattr__(self, name: str) -> Any:
            return getattr(embedder, name)

        def encode(self, texts: Any) -> Any:
            if self.broken:
                raise DependencyUnavailable("injected: model crashed", dependency="model")
            return embedder.encode(texts)

    broken = BrokenEmbedder()
    app = make_app(store=failing)
    client = app.test_client()
    assert post(client, {"id": "doc", "text": SHORT}).status_code == 200
    before, calls = snapshot(failing), len(failing.calls)
    app.extensions["knowledge_base"].embedder = broken
    broken.broken = True
    response = post(client, {"id": "doc", "text": long_text("x")}, {"id": "n", "text": "New."})
    assert_error_envelope(response, 503)
    assert snapshot(failing) == before
    assert failing.calls[calls:] == [], "nothing may be written before every vector exists"
