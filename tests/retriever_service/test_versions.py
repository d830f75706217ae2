"""Documents change by versions: a failed, killed or beaten write never shows a mix or a part.

The store is the REAL embedded ChromaStore, wrapped so that a chosen call fails after doing part
of its work, as a store that dies mid-write would, or so that another writer runs at a chosen
point of a write, as a second replica would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from qa_common.errors import DependencyUnavailable
from retriever_service.store import ChromaStore, CollectionSpec, StoredChunk
from retriever_service.versions import (
    VersionRecord,
    derived_version,
    new_version,
    parse_chunk_id,
    versioned_chunk_id,
)
from tests.conftest import assert_error_envelope

SHORT = "The room sensor takes a CR2477 coin battery."


def long_text(tag: str, sentences: int = 120) -> str:
    return " ".join(
        f"{tag} note {i}: the furnace setting number {i} controls how the thermostat behaves "
        f"when the house is empty for {i % 9 + 1} hours."
        for i in range(sentences)
    )


class FailingStore:
    """Delegates to a real ChromaStore; chosen calls fail, or run a hook first, once."""

    def __init__(self, inner: ChromaStore) -> None:
        self.inner = inner
        self.fail_upsert_after: int | None = None  # chunks written before the failure
        self.fail_next_delete = False
        self.fail_next_put_versions = False
        # (method, nth call from now) → what to run just before that call.
        self._hooks: dict[tuple[str, int], Callable[[], None]] = {}
        self._counts: dict[str, int] = {}
        self.calls: list[str] = []

    def arm(self, method: str, nth: int, hook: Callable[[], None]) -> None:
        """Run ``hook`` just before the ``nth`` next call of ``method``."""
        self._counts = {}
        self._hooks[(method, nth)] = hook

    def _run_hook(self, name: str) -> None:
        self._counts[name] = self._counts.get(name, 0) + 1
        hook = self._hooks.pop((name, self._counts[name]), None)
        if hook is not None:
            hook()

    def put_versions(self, records: Sequence[VersionRecord]) -> None:
        self._run_hook("put_versions")
        self.calls.append(f"put_versions:{len(records)}")
        if self.fail_next_put_versions:
            self.fail_next_put_versions = False
            raise DependencyUnavailable("injected: store died on commit", dependency="chroma")
        self.inner.put_versions(records)

    def get_versions(self, collection: str, document_ids: Sequence[str]) -> list[VersionRecord]:
        self._run_hook("get_versions")
        return self.inner.get_versions(collection, document_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upsert(self, collection: str, chunks: Sequence[StoredChunk]) -> None:
        self._run_hook("upsert")
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
    return {c.id: (c.text, c.metadata.get("_content_hash")) for c in chunks}


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


def test_failed_commit_keeps_previous_version_and_hides_the_new_chunks(
    fclient: Any, failing: FailingStore
) -> None:
    assert post(fclient, {"id": "doc", "text": long_text("old")}).status_code == 200
    before = snapshot(failing)
    failing.fail_next_put_versions = True
    response = post(fclient, {"id": "doc", "text": long_text("new", 60)})
    assert_error_envelope(response, 503, "dependency_unavailable")
    # The new chunks may still be stored (the commit's fate is unknown), but no reader sees them.
    got = fclient.get("/v1/documents/doc").get_json()
    assert [t[:20] for t in got["chunk_texts"]] == [t[:20] for t, _ in ordered(before)]
    hits = search_texts(fclient, "furnace setting", 50)
    assert hits
    assert all(h.startswith("old") for h in hits)
    again = post(fclient, {"id": "doc", "text": long_text("new", 60)})
    assert again.get_json()["results"][0]["status"] == "updated"
    assert all(h.startswith("new") for h in search_texts(fclient, "furnace setting", 50))


def test_failed_removal_of_the_old_version_still_answers_with_the_new_one(
    fclient: Any, failing: FailingStore, make_app: Any
) -> None:
    assert post(fclient, {"id": "doc", "text": long_text("old")}).status_code == 200
    failing.fail_next_delete = True
    response = post(fclient, {"id": "doc", "text": SHORT})
    # Committed: the write is acknowledged although its clean-up failed.
    assert response.get_json()["results"] == [{"id": "doc", "status": "updated", "chunks": 1}]
    assert "failed" in failing.calls
    assert len(snapshot(failing)) > 1, "the old chunks are still stored"
    assert fclient.get("/v1/documents/doc").get_json()["chunk_texts"] == [SHORT]
    assert search_texts(fclient, "furnace setting", 50) == [SHORT]
    # The sweep removes what the failed clean-up left.
    kb = fclient.application.extensions["knowledge_base"]
    assert kb.sweep("documents", orphan_grace_s=600) == {
        "superseded_versions": 1,
        "orphan_chunks": 0,
        "records_without_chunks": 0,
    }
    [only] = snapshot(failing)
    assert parse_chunk_id(only)[0] == "doc"


def test_chunks_no_version_names_are_invisible_and_swept_once_old(
    fclient: Any, failing: FailingStore, embedder: Any
) -> None:
    """A writer killed before its commit leaves chunks that no reader may see."""
    assert post(fclient, {"id": "doc", "text": SHORT}).status_code == 200
    version = new_version()
    for written_at, suffix in ((time.time() - 3600, "old"), (time.time(), "young")):
        text = f"Killed writer {suffix}: the room sensor takes an AAA battery."
        failing.inner.upsert(
            "documents",
            [
                StoredChunk(
                    id=versioned_chunk_id(f"doc-{suffix}", version, 0),
                    text=text,
                    metadata={
                        "_document_id": f"doc-{suffix}",
                        "_position": 0,
                        "_chunk_count": 1,
                        "_written_at": written_at,
                    },
                    embedding=embedder.encode([text])[0],
                )
            ],
        )
    hits = search_texts(fclient, "which battery does the room sensor take", 10)
    assert hits == [SHORT]
    assert fclient.get("/v1/documents/doc-old").status_code == 404
    listed = fclient.get("/v1/documents").get_json()
    assert [d["id"] for d in listed["documents"]] == ["doc"]
    kb = fclient.application.extensions["knowledge_base"]
    assert kb.sweep("documents", orphan_grace_s=600) == {
        "superseded_versions": 0,
        "orphan_chunks": 1,
        "records_without_chunks": 0,
    }
    left = {parse_chunk_id(c)[0] for c in snapshot(failing)}
    assert left == {"doc", "doc-young"}, "a write still in its grace period is left alone"


def test_a_write_slower_than_half_the_grace_is_refused_whole(
    make_app: Any, failing: FailingStore
) -> None:
    """Past half the grace, another replica's sweep may take its chunks for a dead writer's."""
    client = make_app(store=failing, orphan_grace_s=1.0).test_client()
    assert post(client, {"id": "doc", "text": long_text("old")}).status_code == 200
    failing.arm("upsert", 1, lambda: time.sleep(0.7))
    response = post(client, {"id": "doc", "text": long_text("new", 60)})
    assert_error_envelope(response, 504, "dependency_timeout")
    texts = client.get("/v1/documents/doc").get_json()["chunk_texts"]
    assert all(t.startswith("old") for t in texts)
    assert all(
        parse_chunk_id(c)[1] == parse_chunk_id(next(iter(snapshot(failing))))[1]
        for c in snapshot(failing)
    ), "the refused write's chunks are removed"


def test_a_record_whose_chunks_are_gone_is_an_error_then_swept(
    fclient: Any, failing: FailingStore
) -> None:
    """A collection dropped under a write in flight: the record outlives its chunks."""
    assert post(fclient, {"id": "doc", "text": long_text("v1")}).status_code == 200
    failing.inner.delete("documents", list(snapshot(failing)))
    error = assert_error_envelope(fclient.get("/v1/documents/doc"), 502)
    assert "ingest it again" in error["message"]
    kb = fclient.application.extensions["knowledge_base"]
    assert kb.sweep("documents", orphan_grace_s=600)["records_without_chunks"] == 0, "too young"
    assert kb.sweep("documents", orphan_grace_s=-1)["records_without_chunks"] == 1
    assert fclient.get("/v1/documents/doc").status_code == 404
    assert post(fclient, {"id": "doc", "text": long_text("v1")}).get_json()["created"] == 1


# -- two writers ------------------------------------------------------------------------------


# A write calls, in order: get_versions (unchanged?), upsert (chunks), get_versions (records
# seen), put_versions (commit), get_versions (still the highest?). Replica B writes in between.


def replica_b_writes(client: Any, failing: FailingStore, acknowledged: list[str]) -> Callable:
    other = second_replica(client, failing)

    def write() -> None:
        response = post(other, {"id": "doc", "text": long_text("v3", 40)})
        assert response.status_code == 200, response.get_json()
        acknowledged.append("v3")

    return write


def test_a_write_committing_after_another_is_kept(fclient: Any, failing: FailingStore) -> None:
    """B commits while A's chunks are stored but not committed: A commits later and wins."""
    assert post(fclient, {"id": "doc", "text": long_text("v1")}).status_code == 200
    acknowledged: list[str] = []
    failing.arm("get_versions", 2, replica_b_writes(fclient, failing, acknowledged))
    response = post(fclient, {"id": "doc", "text": long_text("v2", 50)})
    assert acknowledged == ["v3"]
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["results"][0]["status"] == "updated"
    assert_single_version(fclient, failing, "v2")


@pytest.mark.parametrize(
    ("method", "nth"),
    [("put_versions", 1), ("get_versions", 3)],
    ids=["between-read-and-commit", "between-commit-and-check"],
)
def test_a_write_beaten_by_a_concurrent_commit_gets_409_and_leaves_no_trace(
    fclient: Any, failing: FailingStore, method: str, nth: int
) -> None:
    """B commits above A's sequence while A commits: B is kept, A is told it was not."""
    assert post(fclient, {"id": "doc", "text": long_text("v1")}).status_code == 200
    acknowledged: list[str] = []
    failing.arm(method, nth, replica_b_writes(fclient, failing, acknowledged))
    response = post(fclient, {"id": "doc", "text": long_text("v2", 50)})
    assert acknowledged == ["v3"]
    assert_error_envelope(response, 409, "write_conflict")
    assert_single_version(fclient, failing, "v3")


def test_a_delete_acknowledged_after_a_write_leaves_nothing(
    fclient: Any, failing: FailingStore
) -> None:
    assert post(fclient, {"id": "doc", "text": long_text("v1")}).status_code == 200
    other = second_replica(fclient, failing)
    assert post(other, {"id": "doc", "text": long_text("v2")}).status_code == 200
    assert fclient.delete("/v1/documents/doc").status_code == 200
    assert fclient.get("/v1/documents/doc").status_code == 404
    assert other.get("/v1/documents/doc").status_code == 404
    assert search_texts(other, "furnace setting", 50) == []
    assert snapshot(failing) == {}, "both versions' chunks are removed"


def test_a_write_after_a_delete_is_kept(fclient: Any, failing: FailingStore) -> None:
    assert post(fclient, {"id": "doc", "text": long_text("v1")}).status_code == 200
    assert fclient.delete("/v1/documents/doc").status_code == 200
    again = post(fclient, {"id": "doc", "text": long_text("v2")})
    assert again.get_json()["results"][0]["status"] == "created"
    assert_single_version(fclient, failing, "v2")


def test_version_ids_round_trip_and_reject_other_ids() -> None:
    version = new_version()
    for document_id in ("faq-001", "a:1", "x@y", "guides/setup.md", "é@v:0"):
        chunk = versioned_chunk_id(document_id, version, 7)
        assert parse_chunk_id(chunk) == (document_id, version)
    assert parse_chunk_id("faq-001:0") is None, "ids written before versions are not versioned"
    assert parse_chunk_id("a@vXYZ:0") is None
    assert derived_version("a", "b") == derived_version("a", "b") != derived_version("a", "c")


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


# -- helpers ----------------------------------------------------------------------------------


def ordered(snap: dict[str, tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [snap[cid] for cid in sorted(snap, key=lambda c: int(c.rpartition(":")[2]))]


def search_texts(client: Any, query: str, top_k: int) -> list[str]:
    for mode in ("dense", "hybrid"):
        response = client.post("/v1/search", json={"query": query, "top_k": top_k, "mode": mode})
        assert response.status_code == 200, response.get_json()
        texts = [h["text"] for h in response.get_json()["results"]]
        if mode == "dense":
            dense = texts
        else:
            assert sorted(texts) == sorted(dense), "dense and hybrid see the same chunks"
    return dense


def second_replica(client: Any, failing: FailingStore) -> Any:
    """Another retriever app on the same store, as a second replica would be."""
    from retriever_service.app import create_app

    app = client.application
    config = app.extensions["retriever_config"]
    kb = app.extensions["knowledge_base"]
    return create_app(config, embedder=kb.embedder, store=failing.inner).test_client()


def assert_single_version(client: Any, failing: FailingStore, tag: str) -> None:
    """The document is one whole version, ``tag``, for readers and in the store itself."""
    texts = client.get("/v1/documents/doc").get_json()["chunk_texts"]
    assert texts
    assert all(t.startswith(tag) for t in texts)
    assert all(t.startswith(tag) for t in search_texts(client, "furnace setting", 50))
    versions = {parse_chunk_id(cid)[1] for cid in snapshot(failing)}
    assert len(versions) == 1, "the beaten version is removed"
