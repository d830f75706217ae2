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


def write_legacy_store(path: str, embedder: Any, *, broken: bool = True) -> None:
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
    assert len(ids) == 7, "every chunk once, and the broken document's chunk gone"
    assert all(parse_chunk_id(i) is not None for i in ids)
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
