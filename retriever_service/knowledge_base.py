"""The retriever's core: ingest documents as chunks, delete them, and search them.

Chroma has no transactions, so documents change by versions (see ``versions``): a write stores
its chunks under a new version and switches to it with one record; searches and reads return
only chunks of each document's current version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from qa_common.errors import BadGateway, DependencyTimeout, ValidationFailed
from retriever_service.chunk_keys import (
    CHUNK_COUNT,
    CONTENT_HASH,
    DOCUMENT_ID,
    END,
    INGESTED_AT,
    POSITION,
    RESERVED_PREFIX,
    START,
    VERSION,
    WRITTEN_AT,
)
from retriever_service.chunking import Chunk, Chunker
from retriever_service.embedder import Embedder
from retriever_service.errors import DocumentNotFound, WriteConflict
from retriever_service.fusion import Fusion, fuse
from retriever_service.lexical import query_terms
from retriever_service.lexical_sync import LexicalSync, lexical_chunks
from retriever_service.parsing.model import Segment
from retriever_service.store import Metadata, ScoredChunk, StoredChunk, VectorStore
from retriever_service.versions import (
    VersionRecord,
    current_versions,
    new_version,
    next_seq,
    parse_chunk_id,
    versioned_chunk_id,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocumentInput:
    """A document to ingest; without an id, its id is a hash of its text."""

    text: str
    id: str | None = None
    metadata: Metadata = field(default_factory=dict)
    # Spans of ``text`` with the page and section each comes from; chunks never cross a page.
    segments: tuple[Segment, ...] = ()


@dataclass(frozen=True)
class IngestOutcome:
    id: str
    status: Literal["created", "updated", "unchanged"]
    chunks: int


SearchMode = Literal["dense", "lexical", "hybrid"]
# Chunks embedded between two progress reports of an ingest that asked for them.
_PROGRESS_SLICE = 128
# How far down the BM25 ranking hybrid search reads scores for the dense candidates, in pools.
_LEXICAL_SCORED_FACTOR = 4


@dataclass(frozen=True)
class SearchSettings:
    """How hybrid search fuses, and how many candidates each side brings."""

    mode: SearchMode = "hybrid"
    fusion: Fusion = "weighted"
    dense_weight: float = 0.6
    candidates: int = 50


@dataclass(frozen=True)
class SearchHit:
    chunk_id: str
    document_id: str
    position: int
    text: str
    score: float
    metadata: Metadata
    start: int | None
    end: int | None
    lexical_score: float | None = None
    fused_score: float | None = None


@dataclass(frozen=True)
class QueryTerm:
    """One query term: how many chunks of the collection hold it, its IDF, and which results do."""

    term: str
    document_frequency: int
    idf: float
    in_results: bool
    result_ranks: list[int]


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    embed_ms: float
    query_ms: float
    mode: SearchMode = "dense"
    fusion: Fusion | None = None
    dense_weight: float | None = None
    lexical_ms: float = 0.0
    sync_ms: float = 0.0
    query_terms: list[QueryTerm] | None = None
    collection_chunks: int | None = None


def default_document_id(text: str) -> str:
    """Return the id a document gets when none is given: a hash of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _iso_time(seconds: object) -> str:
    moment = datetime.fromtimestamp(float(seconds), tz=UTC)  # type: ignore[arg-type]
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _user_metadata(metadata: Metadata) -> Metadata:
    return {k: v for k, v in metadata.items() if not k.startswith(RESERVED_PREFIX)}


class KnowledgeBase:
    """Chunks, embeds and stores documents; answers nearest-chunk queries."""

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        chunker: Chunker,
        *,
        default_collection: str,
        lexical: LexicalSync,
        search_settings: SearchSettings | None = None,
        orphan_grace_s: float = 600.0,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.chunker = chunker
        self.default_collection = default_collection
        self.lexical = lexical
        self.search_settings = search_settings or SearchSettings()
        # Chunks no record names are swept once this old; a write must commit well before.
        self.orphan_grace_s = orphan_grace_s
        # Writes in one process are serialized so that a document's check-then-replace is atomic.
        self._write_lock = threading.Lock()

    def collection(self, name: str | None) -> str:
        return name or self.default_collection

    def content_hash(self, document: DocumentInput) -> str:
        """Hash what determines a document's chunks and vectors: text, metadata, settings."""
        fields: dict[str, Any] = {
            "text": document.text,
            # Where a file was ingested from is not its content: the same file from a folder or
            # uploaded through the page is the same, unchanged document.
            "metadata": {k: v for k, v in document.metadata.items() if k != "source_root"},
            "chunker": self.chunker.signature,
            "model": self.embedder.model_name,
        }
        if document.segments:
            # Only when present, so that documents stored before segments existed stay unchanged.
            fields["segments"] = [[s.start, s.end, s.page, s.section] for s in document.segments]
        material = json.dumps(fields, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    # -- ingestion ----------------------------------------------------------------------------

    def ingest(
        self,
        documents: Sequence[DocumentInput],
        collection: str | None = None,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[IngestOutcome]:
        """Upsert documents: new ones are added, changed ones replaced, unchanged ones skipped.

        ``progress(done, total)`` is told how many chunks are embedded, as they are.
        """
        name = self.collection(collection)
        ids = [doc.id or default_document_id(doc.text) for doc in documents]
        duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
        if duplicates:
            raise ValidationFailed(
                f"Document ids must be unique within a request; repeated: {duplicates[:5]}",
                details=[
                    {"field": "documents", "message": f"repeated id {d!r}"} for d in duplicates
                ],
            )
        self.store.ensure_collection(name, create=True)
        hashes = [self.content_hash(doc) for doc in documents]
        # Writes in one process are serialized, so that one replica never conflicts with itself.
        with self._write_lock:
            current = current_versions(self.store.get_versions(name, ids))
            outcomes: list[IngestOutcome | None] = [None] * len(documents)
            to_write: list[int] = []
            for i, doc_id in enumerate(ids):
                stored = current.get(doc_id)
                if stored is not None and stored.live and stored.content_hash == hashes[i]:
                    outcomes[i] = IngestOutcome(doc_id, "unchanged", stored.chunk_count)
                else:
                    to_write.append(i)
            if not to_write:
                return [o for o in outcomes if o is not None]
            records, chunks = self._write_chunks(name, documents, ids, hashes, to_write, progress)
            written_at = float(chunks[0].metadata[WRITTEN_AT])
            if time.time() - written_at > self.orphan_grace_s / 2:
                # Another replica's sweep may already count these chunks as a dead writer's:
                # committing now could make a version current with chunks missing.
                self._discard_chunks(name, [c.id for c in chunks])
                raise DependencyTimeout(
                    "The vector store took too long to store these documents "
                    f"(over {self.orphan_grace_s / 2:.0f} s); nothing was changed. Send them "
                    "again, in smaller requests.",
                    dependency="chroma",
                )
            won, lost = self._commit(name, records)
            won_ids = {r.document_id for r in won}
            for i in to_write:
                if ids[i] in won_ids:
                    previous = current.get(ids[i])
                    status = "updated" if previous is not None and previous.live else "created"
                    outcomes[i] = IngestOutcome(ids[i], status, records[ids[i]].chunk_count)
            if won:
                self.lexical.record_write(
                    name,
                    sorted(won_ids),
                    chunks=lexical_chunks(c for c in chunks if c.metadata[DOCUMENT_ID] in won_ids),
                )
        if lost:
            raise WriteConflict(
                "Another request wrote the same documents at the same time and was kept; these "
                f"were not stored: {sorted(r.document_id for r in lost)[:5]}. Send them again "
                "to replace it.",
                details=[
                    {"field": "documents", "message": f"conflict on id {r.document_id!r}"}
                    for r in lost
                ]
                + [
                    {"id": o.id, "status": o.status, "chunks": o.chunks}
                    for o in outcomes
                    if o is not None
                ],
            )
        return [o for o in outcomes if o is not None]

    def _write_chunks(
        self,
        collection: str,
        documents: Sequence[DocumentInput],
        ids: Sequence[str],
        hashes: Sequence[str],
        indexes: Sequence[int],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[str, VersionRecord], list[StoredChunk]]:
        """Store the documents' chunks under new versions, still invisible; return their records.

        Nothing is visible until the records are committed: a failure or a kill before leaves
        only chunks that no record names, which the start-up sweep removes.
        """
        new_chunks: list[StoredChunk] = []
        texts: list[str] = []
        records: dict[str, VersionRecord] = {}
        ingested_at = round(time.time(), 3)
        for i in indexes:
            doc = documents[i]
            pieces = self._pieces(doc)
            if not pieces:
                raise ValidationFailed(
                    f"Document {ids[i]!r} has no text to index.",
                    details=[{"field": f"documents.{i}.text", "message": "no text"}],
                )
            version = new_version()
            records[ids[i]] = VersionRecord(
                collection=collection,
                document_id=ids[i],
                version=version,
                seq=0,  # taken at commit
                state="live",
                content_hash=hashes[i],
                chunk_count=len(pieces),
                ingested_at=ingested_at,
            )
            for position, (piece, origin) in enumerate(pieces):
                metadata: Metadata = {
                    **doc.metadata,
                    DOCUMENT_ID: ids[i],
                    VERSION: version,
                    POSITION: position,
                    CHUNK_COUNT: len(pieces),
                    CONTENT_HASH: hashes[i],
                    START: piece.start,
                    END: piece.end,
                    INGESTED_AT: ingested_at,
                }
                if origin is not None and origin.page is not None:
                    metadata["page"] = origin.page
                if origin is not None and origin.section:
                    metadata["section"] = origin.section
                new_chunks.append(
                    StoredChunk(
                        id=versioned_chunk_id(ids[i], version, position),
                        text=piece.text,
                        metadata=metadata,
                    )
                )
                texts.append(piece.text)
        # Embed everything before the first write: a failure here leaves the store untouched.
        vectors = self._encode(texts, progress)
        # Stamped now, not at the start: the sweep leaves chunks this young alone.
        written_at = round(time.time(), 3)
        new_chunks = [
            StoredChunk(c.id, c.text, {**c.metadata, WRITTEN_AT: written_at}, vectors[k])
            for k, c in enumerate(new_chunks)
        ]
        try:
            self.store.upsert(collection, new_chunks)
        except Exception:
            self._discard_chunks(collection, [c.id for c in new_chunks])
            raise
        return records, new_chunks

    def _discard_chunks(self, collection: str, chunk_ids: list[str]) -> None:
        try:
            self.store.delete(collection, chunk_ids)
        except Exception:
            # Invisible without a record; the start-up sweep removes them.
            log.warning("could not remove %d uncommitted chunks", len(chunk_ids), exc_info=True)

    def _commit(
        self, collection: str, records: dict[str, VersionRecord] | list[VersionRecord]
    ) -> tuple[list[VersionRecord], list[VersionRecord]]:
        """Make these versions current; return those kept and those a concurrent write beat.

        Each record is taken above every record of its document seen, committed, then checked:
        one that is no longer the highest lost to a write committed meanwhile.
        """
        pending = list(records.values()) if isinstance(records, dict) else list(records)
        documents = [r.document_id for r in pending]
        seen: dict[str, list[VersionRecord]] = {}
        for record in self.store.get_versions(collection, documents):
            seen.setdefault(record.document_id, []).append(record)
        pending = [replace(r, seq=next_seq(seen.get(r.document_id, []))) for r in pending]
        self.store.put_versions(pending)
        after: dict[str, list[VersionRecord]] = {}
        for record in self.store.get_versions(collection, documents):
            after.setdefault(record.document_id, []).append(record)
        won: list[VersionRecord] = []
        lost: list[VersionRecord] = []
        for record in pending:
            mine = after.get(record.document_id, [])
            best = current_versions(mine).get(record.document_id)
            if best is not None and (best.version, best.seq) == (record.version, record.seq):
                won.append(record)
            else:
                lost.append(record)
        try:
            # Lost versions can never become current again: no record is ever raised.
            self._remove_versions(collection, lost)
            self._remove_versions(
                collection,
                [
                    old
                    for record in won
                    for old in after.get(record.document_id, [])
                    if old.order < record.order
                ],
            )
        except Exception:
            log.warning("could not remove superseded versions; the sweep will", exc_info=True)
        return won, lost

    def _remove_versions(self, collection: str, records: Sequence[VersionRecord]) -> None:
        """Delete non-current versions: their chunks first, then their records."""
        chunk_ids = [
            versioned_chunk_id(r.document_id, r.version, position)
            for r in records
            for position in range(r.chunk_count)
        ]
        self.store.delete(collection, chunk_ids)
        self.store.delete_versions(records)

    def _encode(self, texts: list[str], progress: Callable[[int, int], None] | None) -> np.ndarray:
        if progress is None:
            return self.embedder.encode(texts)
        # In slices, so that a long upload can say how far it is.
        parts = []
        for first in range(0, len(texts), _PROGRESS_SLICE):
            parts.append(self.embedder.encode(texts[first : first + _PROGRESS_SLICE]))
            progress(min(first + _PROGRESS_SLICE, len(texts)), len(texts))
        return np.vstack(parts)

    def _pieces(self, document: DocumentInput) -> list[tuple[Chunk, Segment | None]]:
        """Chunk a document; no chunk crosses a page, and each is labelled where it starts.

        Segments on one page (or without pages) are chunked together, so that a short section
        joins its neighbours as it always has; a chunk's section is the one it starts in.
        """
        if not document.segments:
            return [(piece, None) for piece in self.chunker.split(document.text)]
        pages: list[list[Segment]] = []
        for segment in document.segments:
            if pages and pages[-1][0].page == segment.page:
                pages[-1].append(segment)
            else:
                pages.append([segment])
        pieces = []
        for segments in pages:
            start, end = segments[0].start, segments[-1].end
            for piece in self.chunker.split(document.text[start:end]):
                shifted = replace(piece, start=piece.start + start, end=piece.end + start)
                label = next(
                    (s for s in reversed(segments) if s.start <= shifted.start), segments[0]
                )
                pieces.append((shifted, label))
        return pieces

    # -- documents ----------------------------------------------------------------------------

    def _current(self, collection: str, document_id: str) -> VersionRecord:
        record = current_versions(self.store.get_versions(collection, [document_id])).get(
            document_id
        )
        if record is None or not record.live:
            raise DocumentNotFound(f"No document {document_id!r} in collection {collection!r}.")
        return record

    def get_document(self, document_id: str, collection: str | None = None) -> dict[str, Any]:
        """Return a stored document's chunk count, content hash and metadata."""
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        # A write switching versions between the two reads removes the chunks read for: the
        # next try reads the new version.
        previous: VersionRecord | None = None
        while True:
            record = self._current(name, document_id)
            chunks = self.store.get_by_ids(
                name, self._chunk_ids(record), with_content=True, with_text=True
            )
            if len(chunks) == record.chunk_count:
                break
            if previous is not None and previous.record_id == record.record_id:
                # The same current version twice, chunks missing both times: not a race.
                raise BadGateway(
                    f"Document {document_id!r} is missing {record.chunk_count - len(chunks)} "
                    "of its chunks in the vector store; ingest it again.",
                    dependency="chroma",
                )
            previous = record
        chunks.sort(key=lambda c: int(c.metadata[POSITION]))
        return {
            "id": document_id,
            "collection": name,
            "chunks": len(chunks),
            "content_hash": record.content_hash,
            "metadata": _user_metadata(chunks[0].metadata),
            "chunk_texts": [c.text for c in chunks],
        }

    @staticmethod
    def _chunk_ids(record: VersionRecord) -> list[str]:
        return [
            versioned_chunk_id(record.document_id, record.version, position)
            for position in range(record.chunk_count)
        ]

    def _live_documents(self, collection: str) -> list[VersionRecord]:
        return [r for r in current_versions(self.store.all_versions(collection)).values() if r.live]

    def list_documents(
        self, collection: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """Return a page of the collection's documents, newest first, and how many there are."""
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        # The version records order the list; only the page's first chunks are read.
        live = sorted(self._live_documents(name), key=lambda r: (-r.ingested_at, r.document_id))
        total = len(live)
        page = live[offset : offset + limit]
        firsts = {
            c.id: c
            for c in self.store.get_by_ids(
                name, [versioned_chunk_id(r.document_id, r.version, 0) for r in page]
            )
        }
        documents = []
        for record in page:
            first = firsts.get(versioned_chunk_id(record.document_id, record.version, 0))
            metadata = first.metadata if first is not None else {}
            documents.append(
                {
                    "id": record.document_id,
                    "title": metadata.get("title"),
                    "source": metadata.get("source"),
                    "type": metadata.get("type"),
                    "chunks": record.chunk_count,
                    "ingested_at": _iso_time(record.ingested_at),
                    # The first chunk's page and section are not the document's.
                    "metadata": {
                        k: v
                        for k, v in _user_metadata(metadata).items()
                        if k not in ("page", "section")
                    },
                }
            )
        next_offset = offset + len(page)
        return {
            "collection": name,
            "documents": documents,
            "total": total,
            "offset": offset,
            "limit": limit,
            "next_offset": next_offset if next_offset < total else None,
        }

    def delete_document(self, document_id: str, collection: str | None = None) -> int:
        """Delete a document with a tombstone version; return how many chunks it had."""
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        with self._write_lock:
            record = self._current(name, document_id)
            tombstone = VersionRecord(
                collection=name,
                document_id=document_id,
                version=new_version(),
                seq=0,
                state="deleted",
                ingested_at=round(time.time(), 3),
            )
            won, _ = self._commit(name, [tombstone])
            if not won:
                raise WriteConflict(
                    f"Document {document_id!r} was written by another request at the same time "
                    "and kept; delete it again to remove that version."
                )
            self.lexical.record_write(name, [document_id])
        return record.chunk_count

    def delete_documents_of_source(
        self, source: str, keep: set[str], collection: str | None = None
    ) -> list[str]:
        """Delete the documents read from file ``source`` that are not in ``keep``.

        A file uploaded again replaces what it held: a CSV row edited since has a new id, and
        its old version must not stay searchable beside it.
        """
        name = self.collection(collection)
        firsts = self.store.get(name, where={"$and": [{"source": source}, {POSITION: 0}]})
        # Chunks of superseded versions may linger until removed: only current ones count.
        visible = self._visible(name, [c.id for c in firsts])
        stale = sorted({str(c.metadata[DOCUMENT_ID]) for c in firsts if c.id in visible} - keep)
        for document_id in stale:
            try:
                self.delete_document(document_id, collection)
            except DocumentNotFound:
                continue  # deleted meanwhile: what was asked holds
        return stale

    def delete_collection(self, name: str) -> None:
        """Drop a whole collection, for this retriever and every replica's lexical index."""
        self.store.ensure_collection(name, create=False)
        with self._write_lock:
            # Records first: chunks left by a kill between the two are named by no record.
            self.store.delete_versions(self.store.all_versions(name))
            self.store.delete_collection(name)
            self.lexical.record_write(name, [], kind="drop_collection")

    def sweep(self, collection: str, *, orphan_grace_s: float | None = None) -> dict[str, int]:
        """Remove what no reader can see: superseded versions, and chunks no record names.

        Chunks without a record younger than ``orphan_grace_s`` may belong to a write about to
        commit, on this replica or another, and are left alone. A current record whose first
        chunk is gone (its collection was dropped under a write in flight) is removed too.
        """
        grace = self.orphan_grace_s if orphan_grace_s is None else orphan_grace_s
        cutoff = time.time() - grace
        records = self.store.all_versions(collection)
        current = current_versions(records)
        superseded = [r for r in records if current[r.document_id].record_id != r.record_id]
        self._remove_versions(collection, superseded)
        ghosts = self._ghosts(collection, list(current.values()), cutoff)
        self.store.delete_versions(ghosts)
        for ghost in ghosts:
            current.pop(ghost.document_id, None)
        known = {(r.document_id, r.version) for r in current.values()}
        orphans: list[str] = []
        for page in self.store.scan_metadata(collection):
            for chunk in page:
                key = parse_chunk_id(chunk.id)
                if key is None or key in known:
                    continue
                written_at = chunk.metadata.get(WRITTEN_AT)
                if written_at is None or float(written_at) < cutoff:
                    orphans.append(chunk.id)
        if orphans:
            # Under the write lock, and checked again: a write of this process that committed
            # during the scan is named by now, and none is between its chunks and its commit.
            with self._write_lock:
                named = self._named(collection, orphans)
                orphans = [cid for cid in orphans if cid not in named]
                self.store.delete(collection, orphans)
        touched = {r.document_id for r in [*superseded, *ghosts]} | {
            key[0] for cid in orphans if (key := parse_chunk_id(cid)) is not None
        }
        if touched:
            self.lexical.record_write(collection, sorted(touched))
        return {
            "superseded_versions": len(superseded),
            "orphan_chunks": len(orphans),
            "records_without_chunks": len(ghosts),
        }

    def _ghosts(
        self, collection: str, current: list[VersionRecord], cutoff: float
    ) -> list[VersionRecord]:
        """Return the old current live records whose first chunk the store does not hold."""
        candidates = [r for r in current if r.live and r.ingested_at < cutoff]
        ghosts: list[VersionRecord] = []
        for first in range(0, len(candidates), 500):
            batch = candidates[first : first + 500]
            held = {
                c.id
                for c in self.store.get_by_ids(
                    collection, [versioned_chunk_id(r.document_id, r.version, 0) for r in batch]
                )
            }
            ghosts += [
                r for r in batch if versioned_chunk_id(r.document_id, r.version, 0) not in held
            ]
        return ghosts

    # -- search -------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        top_k: int,
        min_score: float | None = None,
        where: dict[str, Any] | None = None,
        collection: str | None = None,
        mode: SearchMode | None = None,
        fusion: Fusion | None = None,
        dense_weight: float | None = None,
    ) -> SearchResult:
        """Return the best chunks for the query in the mode's own order; ``score`` is cosine."""
        settings = self.search_settings
        mode = mode or settings.mode
        name = self.collection(collection)
        # Fail on an unknown collection before paying for the embedding.
        self.store.ensure_collection(name, create=name == self.default_collection)
        started = time.perf_counter()
        # Every mode embeds the query: each hit's score is its cosine similarity.
        vector = self.embedder.encode([query])[0]
        embedded = time.perf_counter()
        if mode == "dense":
            rows = self._current_nearest(name, vector, top_k, where)
            queried = time.perf_counter()
            hits = []
            for row in sorted(rows, key=lambda r: r.distance):
                hit = self._hit(row.id, row.text or "", row.metadata, 1.0 - row.distance)
                if min_score is None or hit.score >= min_score:
                    hits.append(hit)
            return SearchResult(
                hits, embed_ms=(embedded - started) * 1000, query_ms=(queried - embedded) * 1000
            )

        pool = max(top_k, settings.candidates)
        # Candidates are ranked on ids and cosines alone; text and metadata are read only for the
        # few returned (reading them for every candidate costs as much as the query).
        cosines: dict[str, float] = {}
        if mode != "lexical":
            for row in self.store.query(name, vector, pool, where, with_content=False):
                cosines[row.id] = 1.0 - row.distance
        queried = time.perf_counter()
        self.lexical.ensure_fresh(name)
        # Catching up may have learnt that another replica dropped the collection: 404 then.
        self.store.ensure_collection(name, create=name == self.default_collection)
        synced = time.perf_counter()
        terms = query_terms(query)
        index = self.lexical.index
        # With a filter, Chroma drops lexical candidates that fail it: ask for more of them.
        lexical_pool = pool * 4 if where else pool
        # One ranked read serves both sides: its head proposes candidates, and its whole length
        # scores the dense candidates (FTS5 scores every match either way; asking it about given
        # rows costs as much again). A dense candidate ranked past it counts as holding no term.
        scored = index.search(name, terms, lexical_pool * _LEXICAL_SCORED_FACTOR)
        proposed = [cid for cid, _ in scored[:lexical_pool]]
        visible = self._visible(name, [*cosines, *proposed])
        cosines = {cid: cosine for cid, cosine in cosines.items() if cid in visible}
        proposed = [cid for cid in proposed if cid in visible]
        self._confirm_lexical(name, proposed, cosines, vector, where)
        lexical = {cid: s for cid, s in scored if cid in cosines}
        fused: dict[str, float] = {}
        fusion_used: Fusion | None = None
        weight_used: float | None = None
        if mode == "lexical":
            ranked_ids = sorted(lexical, key=lambda cid: -lexical[cid])
        else:
            fusion_used = fusion or settings.fusion
            weight_used = settings.dense_weight if dense_weight is None else dense_weight
            fused = fuse(cosines, lexical, method=fusion_used, dense_weight=weight_used)
            ranked_ids = sorted(cosines, key=lambda cid: (-fused[cid], -cosines[cid]))
        hits = self._read_hits(
            name, ranked_ids, cosines, top_k, min_score, lexical=lexical, fused=fused
        )
        total, stats = index.term_stats(name, terms, [h.chunk_id for h in hits])
        rank_of = {h.chunk_id: rank for rank, h in enumerate(hits, start=1)}
        finished = time.perf_counter()
        return SearchResult(
            hits,
            embed_ms=(embedded - started) * 1000,
            query_ms=(queried - embedded) * 1000,
            mode=mode,
            fusion=fusion_used,
            dense_weight=weight_used,
            sync_ms=(synced - queried) * 1000,
            lexical_ms=(finished - synced) * 1000,
            query_terms=[
                QueryTerm(
                    term=stat.term,
                    document_frequency=stat.document_frequency,
                    idf=stat.idf,
                    in_results=bool(stat.matching_chunk_ids),
                    result_ranks=sorted(rank_of[c] for c in stat.matching_chunk_ids),
                )
                for stat in stats
            ],
            collection_chunks=total,
        )

    def _visible(self, collection: str, chunk_ids: Sequence[str]) -> set[str]:
        """Return the chunk ids that belong to their document's current version."""
        parsed = {cid: key for cid in chunk_ids if (key := parse_chunk_id(cid)) is not None}
        if not parsed:
            return set()
        current = current_versions(
            self.store.get_versions(collection, sorted({doc for doc, _ in parsed.values()}))
        )
        return {
            cid
            for cid, (doc, version) in parsed.items()
            if (record := current.get(doc)) is not None
            and record.live
            and record.version == version
        }

    def _named(self, collection: str, chunk_ids: Sequence[str]) -> set[str]:
        """Return the chunk ids whose version has a record, current or not."""
        parsed = {cid: key for cid in chunk_ids if (key := parse_chunk_id(cid)) is not None}
        documents = sorted({doc for doc, _ in parsed.values()})
        known = {(r.document_id, r.version) for r in self.store.get_versions(collection, documents)}
        return {cid for cid, key in parsed.items() if key in known}

    def _current_nearest(
        self, collection: str, vector: np.ndarray, top_k: int, where: dict[str, Any] | None
    ) -> list[ScoredChunk]:
        """Return the ``top_k`` nearest chunks of current versions."""
        fetch = top_k
        while True:
            rows = self.store.query(collection, vector, fetch, where)
            visible = self._visible(collection, [r.id for r in rows])
            current = [r for r in rows if r.id in visible]
            # Superseded chunks linger only until their writer removes them: ask for more only
            # while they crowd out current ones.
            if len(current) >= top_k or len(rows) < fetch or fetch >= top_k * 16:
                return current[:top_k]
            fetch *= 2

    def _confirm_lexical(
        self,
        collection: str,
        proposed: Sequence[str],
        cosines: dict[str, float],
        vector: np.ndarray,
        where: dict[str, Any] | None,
    ) -> None:
        """Add the lexical candidates the store still holds (and ``where`` keeps), with cosine.

        The lexical index only proposes ids: vectors, text and metadata come from the store, so a
        chunk deleted since the index last caught up is never returned.
        """
        wanted = [cid for cid in proposed if cid not in cosines]
        for chunk in self.store.get_by_ids(collection, wanted, where=where, with_embedding=True):
            cosine = float(np.dot(vector, chunk.embedding)) if chunk.embedding is not None else 0.0
            cosines[chunk.id] = cosine

    def _read_hits(
        self,
        collection: str,
        ranked_ids: Sequence[str],
        cosines: dict[str, float],
        top_k: int,
        min_score: float | None,
        *,
        lexical: dict[str, float],
        fused: dict[str, float],
    ) -> list[SearchHit]:
        """Read the text and metadata of the best ``top_k`` candidates the store still holds."""
        eligible = [
            cid for cid in ranked_ids if min_score is None or round(cosines[cid], 6) >= min_score
        ]
        hits: list[SearchHit] = []
        offset = 0
        # A candidate deleted since it was ranked is skipped, and the next one read instead.
        while len(hits) < top_k and offset < len(eligible):
            batch = eligible[offset : offset + top_k - len(hits)]
            offset += len(batch)
            stored = {c.id: c for c in self.store.get_by_ids(collection, batch, with_text=True)}
            for cid in batch:
                if (chunk := stored.get(cid)) is not None:
                    hits.append(
                        self._hit(
                            cid,
                            chunk.text or "",
                            chunk.metadata,
                            cosines[cid],
                            lexical_score=lexical.get(cid, 0.0),
                            fused_score=fused.get(cid) if fused else None,
                        )
                    )
        return hits

    @staticmethod
    def _hit(
        chunk_id: str,
        text: str,
        metadata: Metadata,
        cosine: float,
        *,
        lexical_score: float | None = None,
        fused_score: float | None = None,
    ) -> SearchHit:
        # Rounded as reported, so that a client filtering on min_score reproduces the cut-off.
        start, end = metadata.get(START), metadata.get(END)
        return SearchHit(
            chunk_id=chunk_id,
            document_id=str(metadata.get(DOCUMENT_ID, "")),
            position=int(metadata.get(POSITION, 0)),
            text=text,
            score=round(cosine, 6),
            metadata=_user_metadata(metadata),
            start=int(start) if start is not None else None,
            end=int(end) if end is not None else None,
            lexical_score=round(lexical_score, 6) if lexical_score is not None else None,
            fused_score=round(fused_score, 6) if fused_score is not None else None,
        )

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed arbitrary texts with the retriever's model."""
        return self.embedder.encode(texts)

    # -- status -------------------------------------------------------------------------------

    def stats(self, collection: str | None = None) -> dict[str, Any]:
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        live = self._live_documents(name)
        documents = len(live)
        chunks = sum(r.chunk_count for r in live)
        return {
            "collection": name,
            "documents": documents,
            "chunks": chunks,
            "model": self.embedder.model_name,
            "dimension": self.embedder.dimension,
            "dtype": self.embedder.dtype,
            "max_chunk_tokens": self.chunker.max_tokens,
            "chunk_overlap_tokens": self.chunker.overlap_tokens,
            "store": self.store.description,
            "lexical_index": self.lexical.index.description,
            "search_mode": self.search_settings.mode,
            "hybrid_fusion": self.search_settings.fusion,
            "hybrid_dense_weight": self.search_settings.dense_weight,
        }

    def check_ready(self) -> dict[str, Any]:
        """Touch the model and the store; raise when either does not answer."""
        started = time.perf_counter()
        vector = self.embedder.encode(["readiness probe"])
        if vector.shape != (1, self.embedder.dimension):
            raise RuntimeError(f"the model returned shape {vector.shape}")
        encoded = time.perf_counter()
        self.store.heartbeat()
        self.store.ensure_collection(self.default_collection, create=True)
        return {
            "model_ms": round((encoded - started) * 1000, 2),
            "store_ms": round((time.perf_counter() - encoded) * 1000, 2),
        }
