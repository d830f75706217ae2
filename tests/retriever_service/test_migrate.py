"""A store written before document versions is refused until one command re-keys it in place."""

from __future__ import annotations

import hashlib
from typing import Any

import chromadb
import pytest
from chromadb.config import Settings

from retriever_service import migrate
from retriever_service.app import create_app
from retriever_service.store import ChromaStore, CollectionSpec
from retriever_service.versions import parse_chunk_id
from tests.conftest import assert_error_envelope

DOCUMENTS = {
    "wifi": [
        "To reset the router, hold the reset button for ten seconds.",
        "The wifi password is printed on the label under the router.",
    ],
    "battery": ["The room sensor takes a CR2477 coin battery."],
    "furnace": [f"Furnace setting {i} keeps the house at {15 + i} degrees." for i in range(4)],
}


def write_legacy_store(
    path: str, embedder: Any, *, broken: bool = True, extra: list[tuple[str, str, dict]] = ()
) -> None:
    """Write chunks as the retriever did before versions: ``doc:position`` ids, no records."""
    client = chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))
    collection = client.get_or_create_collection(
        "documents",
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"embedding_model": embedder.model_name, "dimension": embedder.dimension},
        embedding_function=None,
    )
    ids, texts, metadatas = [], [], []
    for order, (document_id, chunks) in enumerate(DOCUMENTS.items()):
        digest = hashlib.sha256(document_id.encode()).hexdigest()
        for position, text in enumerate(chunks):
            ids.append(f"{document_id}:{position}")
            texts.append(text)
            metadatas.append(
                {
                    "_document_id": document_id,
                    "_position": position,
                    "_chunk_count": len(chunks),
                    "_content_hash": digest,
                    "_start": 0,
                    "_end": len(text),
                    "_ingested_at": 1_700_000_000.0 + order,
                    "lang": "en",
                }
            )
    if broken:
        # What a crash of the old code could leave: one chunk of a three-chunk document.
        ids.append("half:1")
        texts.append("Half of a document that a crash interrupted.")
        metadatas.append(
            {"_document_id": "half", "_position": 1, "_chunk_count": 3, "_content_hash": "x"}
        )
    for chunk_id, text, metadata in extra:
        ids.append(chunk_id)
        texts.append(text)
        metadatas.append(metadata)
    collection.add(ids=ids, documents=texts, metadatas=metadatas, embeddings=embedder.encode(texts))


def open_store(path: str, embedder: Any) -> ChromaStore:
    spec = CollectionSpec(embedding_model=embedder.model_name, dimension=embedder.dimension)
    return ChromaStore(spec, path=path)


def stored_ids(store: ChromaStore) -> list[str]:
    return sorted(c.id for c in store.get("documents", where={"_position": {"$gte": 0}}))


def test_a_legacy_store_is_refused_then_migrated_by_one_command(
    make_config: Any, embedder: Any, capsys: Any
) -> None:
    config = make_config()
    write_legacy_store(config.chroma_path, embedder)
    store = open_store(config.chroma_path, embedder)
    client = create_app(config, embedder=embedder, store=store).test_client()
    error = assert_error_envelope(client.get("/readyz"), 503, "not_ready")
    assert "python -m retriever_service.migrate" in error["message"]
    error = assert_error_envelope(client.post("/v1/search", json={"query": "wifi"}), 503)
    assert error["code"] == "migration_required"

    assert migrate.migrate_store(open_store(config.chroma_path, embedder)) == 1
    printed = capsys.readouterr().out
    assert "documents: 3 documents, 7 chunks re-keyed" in printed
    assert "ingest them again: half" in printed

    ids = stored_ids(store)
    assert len(ids) == 8, "every chunk once, and the broken document's chunk kept as it was"
    assert [i for i in ids if parse_chunk_id(i) is None] == ["half:1"]
    client = create_app(config, embedder=embedder, store=store).test_client()
    assert client.get("/readyz").status_code == 200
    hits = client.post("/v1/search", json={"query": "which coin battery?", "top_k": 1}).get_json()
    assert hits["results"][0]["text"] == DOCUMENTS["battery"][0]
    assert hits["results"][0]["metadata"] == {"lang": "en"}
    got = client.get("/v1/documents/furnace").get_json()
    assert got["chunk_texts"] == DOCUMENTS["furnace"]
    listed = client.get("/v1/documents").get_json()
    # Newest first, by when each was first ingested, as before.
    assert [d["id"] for d in listed["documents"]] == ["furnace", "battery", "wifi"]
    assert client.get("/v1/stats").get_json()["documents"] == 3
    assert client.get("/v1/documents/half").status_code == 404
    # Ingesting the same documents again finds them unchanged: nothing is duplicated.

    assert migrate.migrate_store(open_store(config.chroma_path, embedder)) == 0
    assert "documents: already migrated" in capsys.readouterr().out
    assert stored_ids(store) == ids


def test_a_migration_killed_halfway_completes_on_a_second_run_without_duplicates(
    make_config: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = make_config()
    write_legacy_store(config.chroma_path, embedder, broken=False)
    store = open_store(config.chroma_path, embedder)
    store.accept_legacy_layout = True
    # Killed after the copies and their records, before the old chunks are deleted.
    monkeypatch.setattr(migrate, "_DOCUMENTS_PER_STEP", 2)
    original_delete = store.delete

    def die(*_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "delete", die)
    with pytest.raises(KeyboardInterrupt):
        migrate.migrate_collection(store, "documents")
    assert store.layout("documents") == 1
    monkeypatch.setattr(store, "delete", original_delete)

    report = migrate.migrate_collection(store, "documents")
    assert (report.documents, report.chunks, report.incomplete) == (3, 7, [])
    ids = stored_ids(store)
    assert len(ids) == 7
    assert all(parse_chunk_id(i) is not None for i in ids)
    records = store.all_versions("documents")
    assert sorted(r.document_id for r in records) == ["battery", "furnace", "wifi"]


def test_the_command_line_migrates_the_configured_store(
    make_config: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    config = make_config()
    write_legacy_store(config.chroma_path, embedder, broken=False)
    monkeypatch.setenv("CHROMA_PATH", config.chroma_path)
    assert migrate.main([]) == 0
    assert "documents: 3 documents, 7 chunks re-keyed" in capsys.readouterr().out
    assert open_store(config.chroma_path, embedder).layout("documents") == 2


def test_a_killed_run_still_reports_and_keeps_a_broken_document(
    make_config: Any, embedder: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    config = make_config()
    write_legacy_store(config.chroma_path, embedder)
    store = open_store(config.chroma_path, embedder)
    store.accept_legacy_layout = True
    monkeypatch.setattr(migrate, "_DOCUMENTS_PER_STEP", 1)
    original_upsert = store.upsert
    calls = []

    def die_on_second_step(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original_upsert(*args)

    monkeypatch.setattr(store, "upsert", die_on_second_step)
    with pytest.raises(KeyboardInterrupt):
        migrate.migrate_collection(store, "documents")
    monkeypatch.setattr(store, "upsert", original_upsert)
    report = migrate.migrate_collection(store, "documents")
    assert report.incomplete == ["half"], "reported again by the run that completes"
    assert "half:1" in stored_ids(store), "its chunk is kept, not deleted unreported"


def test_a_document_left_shrinking_keeps_its_whole_new_version_and_odd_ids_are_copied(
    make_config: Any, embedder: Any
) -> None:
    """The old code killed while a document shrank: new chunks whole, the old tail beside."""
    config = make_config()
    new = ["Shrunk manual, part one.", "Shrunk manual, part two."]
    extra = [
        (
            f"shrunk:{p}",
            text,
            {"_document_id": "shrunk", "_position": p, "_chunk_count": 2, "_content_hash": "new"},
        )
        for p, text in enumerate(new)
    ]
    extra.append(
        (
            "shrunk:2",
            "Old manual, part three.",
            {"_document_id": "shrunk", "_position": 2, "_chunk_count": 3, "_content_hash": "old"},
        )
    )
    # An id that happens to look like a versioned one, written before versions existed.
    odd = "odd@v0123456789abcdef"
    extra.append(
        (
            f"{odd}:0",
            "An odd id.",
            {"_document_id": odd, "_position": 0, "_chunk_count": 1, "_content_hash": "h"},
        )
    )
    write_legacy_store(config.chroma_path, embedder, broken=False, extra=extra)
    store = open_store(config.chroma_path, embedder)
    assert migrate.migrate_store(store) == 0
    client = create_app(config, embedder=embedder, store=store).test_client()
    assert client.get("/v1/documents/shrunk").get_json()["chunk_texts"] == new
    assert client.get(f"/v1/documents/{odd}").get_json()["chunk_texts"] == ["An odd id."]
    assert len(stored_ids(store)) == 7 + 2 + 1
