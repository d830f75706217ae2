"""Re-key a store written before document versions, in place; safe to stop and run again.

    python -m retriever_service.migrate            # every collection of the configured store
    python -m retriever_service.migrate --collection documents

It reads the same settings as the retriever (CHROMA_PATH, or CHROMA_HOST and CHROMA_PORT). Stop
the retrievers first: an embedded directory is locked by the one process using it, and a server's
retrievers refuse a collection (503 ``migration_required``) until it is migrated.

Each document's chunks are copied, vectors included, under a version named by the document's
content, its version record is committed, and then the old chunks are deleted. A re-run after a
kill writes the same ids again, so nothing is duplicated. A document a crash had left partly
written before (chunks of two contents, or missing positions) is not carried over: it is
reported, and must be ingested again. The collection is marked migrated last.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from qa_common.errors import ServiceError
from qa_common.logging_setup import configure_logging
from retriever_service.chunk_keys import (
    CHUNK_COUNT,
    CONTENT_HASH,
    DOCUMENT_ID,
    INGESTED_AT,
    POSITION,
    VERSION,
    WRITTEN_AT,
)
from retriever_service.store import STORE_LAYOUT, ChromaStore, StoredChunk
from retriever_service.versions import (
    VersionRecord,
    derived_version,
    next_seq,
    versioned_chunk_id,
)

log = logging.getLogger(__name__)
# Documents copied per step: their chunks, with vectors, are held in memory at once.
_DOCUMENTS_PER_STEP = 100


@dataclass
class MigrationReport:
    collection: str
    already_migrated: bool = False
    documents: int = 0
    chunks: int = 0
    incomplete: list[str] = field(default_factory=list)


def migrate_collection(store: ChromaStore, name: str) -> MigrationReport:
    """Re-key one collection's chunks by document version; a no-op once it is migrated."""
    report = MigrationReport(name)
    if store.layout(name) == STORE_LAYOUT:
        report.already_migrated = True
        return report
    legacy: dict[str, list[str]] = {}
    for page in store.scan_metadata(name):
        for chunk in page:
            document_id = chunk.metadata.get(DOCUMENT_ID)
            # A copy made by an earlier run carries its version; an old id never does, even one
            # that happens to look versioned.
            if VERSION not in chunk.metadata and document_id is not None:
                legacy.setdefault(str(document_id), []).append(chunk.id)
    documents = sorted(legacy)
    for first in range(0, len(documents), _DOCUMENTS_PER_STEP):
        step = documents[first : first + _DOCUMENTS_PER_STEP]
        _migrate_documents(store, name, {d: legacy[d] for d in step}, report)
        log.info(
            "%s: %d of %d documents", name, min(first + len(step), len(documents)), len(documents)
        )
    store.set_layout(name, STORE_LAYOUT)
    return report


def _migrate_documents(
    store: ChromaStore, name: str, legacy: dict[str, list[str]], report: MigrationReport
) -> None:
    chunks = store.get_by_ids(
        name, [cid for ids in legacy.values() for cid in ids], with_content=True
    )
    by_document: dict[str, list[StoredChunk]] = {}
    for chunk in chunks:
        by_document.setdefault(str(chunk.metadata[DOCUMENT_ID]), []).append(chunk)
    copies: list[StoredChunk] = []
    records: list[VersionRecord] = []
    seen: dict[str, list[VersionRecord]] = {}
    for record in store.get_versions(name, sorted(by_document)):
        seen.setdefault(record.document_id, []).append(record)
    written_at = round(time.time(), 3)
    keep_legacy: set[str] = set()
    for document_id, chunks in sorted(by_document.items()):
        stored = _complete_set(chunks)
        if stored is None:
            # Left as it is (invisible once migrated) and reported by every run until then.
            report.incomplete.append(document_id)
            keep_legacy.update(c.id for c in chunks)
            continue
        content_hash = str(stored[0].metadata[CONTENT_HASH])
        version = derived_version(name, document_id, content_hash)
        for chunk in stored:
            copies.append(
                StoredChunk(
                    id=versioned_chunk_id(document_id, version, int(chunk.metadata[POSITION])),
                    text=chunk.text,
                    metadata={**chunk.metadata, VERSION: version, WRITTEN_AT: written_at},
                    embedding=chunk.embedding,
                )
            )
        records.append(
            VersionRecord(
                collection=name,
                document_id=document_id,
                version=version,
                seq=next_seq(seen.get(document_id, [])),
                state="live",
                content_hash=content_hash,
                chunk_count=len(stored),
                ingested_at=float(stored[0].metadata.get(INGESTED_AT, written_at) or written_at),
            )
        )
    # Copies, then the records that make them visible, then the old chunks: a kill anywhere
    # leaves each document readable once the re-run is done, and never twice.
    store.upsert(name, copies)
    store.put_versions(records)
    store.delete(name, [cid for ids in legacy.values() for cid in ids if cid not in keep_legacy])
    report.documents += len(records)
    report.chunks += len(copies)


def _complete_set(chunks: list[StoredChunk]) -> list[StoredChunk] | None:
    """Return the chunks of the one whole version among a document's, in order, or None.

    A crash of the old code while a document shrank leaves the new version whole beside the old
    one's tail: the set whose content hash and chunk count agree on every position is kept.
    """
    by_hash: dict[object, list[StoredChunk]] = {}
    for chunk in chunks:
        by_hash.setdefault(chunk.metadata.get(CONTENT_HASH), []).append(chunk)
    for group in by_hash.values():
        group.sort(key=lambda c: int(c.metadata.get(POSITION, -1)))
        counts = {int(c.metadata.get(CHUNK_COUNT, -1)) for c in group}
        positions = [int(c.metadata.get(POSITION, -1)) for c in group]
        if len(counts) == 1 and positions == list(range(counts.pop())):
            return group
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from retriever_service.app import build_store
    from retriever_service.config import load_config
    from retriever_service.embedder import load_embedder

    parser = argparse.ArgumentParser(
        prog="python -m retriever_service.migrate",
        description="Re-key a store written before document versions (stop the retrievers first).",
    )
    parser.add_argument(
        "--collection", action="append", help="only this collection (repeatable); default: all"
    )
    args = parser.parse_args(argv)
    configure_logging("migrate")
    config = load_config()
    # The model is loaded for its name and dimension: collections of another model are refused.
    embedder = load_embedder(
        config.embedding_model, dtype=config.embedding_dtype, device="cpu", batch_size=1
    )
    store = build_store(config, embedder)
    assert isinstance(store, ChromaStore)
    return migrate_store(store, args.collection)


def migrate_store(store: ChromaStore, collections: Sequence[str] | None = None) -> int:
    """Migrate the named collections (default: all), print what was done; 1 if any was lost."""
    store.accept_legacy_layout = True
    names = collections or store.list_collections()
    failed = False
    for name in names:
        try:
            report = migrate_collection(store, name)
        except ServiceError as exc:
            # One collection that cannot be read must not stop the others.
            failed = True
            print(f"{name}: not migrated: {exc.message}")
            continue
        if report.already_migrated:
            print(f"{name}: already migrated")
            continue
        print(f"{name}: {report.documents} documents, {report.chunks} chunks re-keyed")
        if report.incomplete:
            failed = True
            print(
                f"{name}: {len(report.incomplete)} documents were partly written by a crash and "
                f"were not kept; ingest them again: {', '.join(report.incomplete[:20])}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
