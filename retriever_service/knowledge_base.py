"""The retriever's core: ingest documents as chunks, delete them, and search them.

Chroma has no transactions, so a write that fails halfway is compensated: the chunks it added
are removed and the document's previous chunks are put back, leaving no half document behind.
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

from qa_common.errors import ValidationFailed
from retriever_service.chunk_keys import (
    CHUNK_COUNT,
    CONTENT_HASH,
    DOCUMENT_ID,
    END,
    INGESTED_AT,
    POSITION,
    RESERVED_PREFIX,
    START,
)
from retriever_service.chunking import Chunk, Chunker, chunk_id
from retriever_service.embedder import Embedder
from retriever_service.errors import DocumentNotFound
from retriever_service.fusion import Fusion, fuse
from retriever_service.lexical import query_terms
from retriever_service.lexical_sync import LexicalSync, lexical_chunks
from retriever_service.parsing.model import Segment
from retriever_service.store import Metadata, StoredChunk, VectorStore

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
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.chunker = chunker
        self.default_collection = default_collection
        self.lexical = lexical
        self.search_settings = search_settings or SearchSettings()
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
        with self._write_lock:
            self.store.ensure_collection(name, create=True)
            existing = self._existing_chunks(name, ids)
            hashes = [self.content_hash(doc) for doc in documents]
            outcomes: list[IngestOutcome | None] = [None] * len(documents)
            to_write: list[int] = []
            for i, doc_id in enumerate(ids):
                stored = existing.get(doc_id, [])
                if self._is_complete(stored, hashes[i]):
                    outcomes[i] = IngestOutcome(doc_id, "unchanged", len(stored))
                else:
                    to_write.append(i)
            if to_write:
                written, chunks = self._write(
                    name, documents, ids, hashes, to_write, existing, progress
                )
                for i in to_write:
                    status = "updated" if existing.get(ids[i]) else "created"
                    outcomes[i] = IngestOutcome(ids[i], status, written[i])
                self.lexical.record_write(
                    name, [ids[i] for i in to_write], chunks=lexical_chunks(chunks)
                )
        return [o for o in outcomes if o is not None]

    def _existing_chunks(self, collection: str, ids: Sequence[str]) -> dict[str, list[StoredChunk]]:
        found: dict[str, list[StoredChunk]] = {}
        unique = list(dict.fromkeys(ids))
        for first in range(0, len(unique), 500):
            batch = unique[first : first + 500]
            for chunk in self.store.get(collection, where={DOCUMENT_ID: {"$in": batch}}):
                found.setdefault(str(chunk.metadata[DOCUMENT_ID]), []).append(chunk)
        return found

    @staticmethod
    def _is_complete(stored: list[StoredChunk], content_hash: str) -> bool:
        # A partially written document (a crash between writes) must not pass as unchanged.
        if not stored:
            return False
        positions = sorted(int(c.metadata.get(POSITION, -1)) for c in stored)
        return all(
            c.metadata.get(CONTENT_HASH) == content_hash for c in stored
        ) and positions == list(range(int(stored[0].metadata.get(CHUNK_COUNT, -1))))

    def _write(
        self,
        collection: str,
        documents: Sequence[DocumentInput],
        ids: Sequence[str],
        hashes: Sequence[str],
        indexes: Sequence[int],
        existing: dict[str, list[StoredChunk]],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[dict[int, int], list[StoredChunk]]:
        new_chunks: list[StoredChunk] = []
        texts: list[str] = []
        chunk_counts: dict[int, int] = {}
        ingested_at = round(time.time(), 3)
        for i in indexes:
            doc = documents[i]
            pieces = self._pieces(doc)
            if not pieces:
                raise ValidationFailed(
                    f"Document {ids[i]!r} has no text to index.",
                    details=[{"field": f"documents.{i}.text", "message": "no text"}],
                )
            chunk_counts[i] = len(pieces)
            for position, (piece, origin) in enumerate(pieces):
                metadata: Metadata = {
                    **doc.metadata,
                    DOCUMENT_ID: ids[i],
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
                    StoredChunk(id=chunk_id(ids[i], position), text=piece.text, metadata=metadata)
                )
                texts.append(piece.text)
        # Embed everything before the first write: a failure here leaves the store untouched.
        vectors = self._encode(texts, progress)
        new_chunks = [
            StoredChunk(c.id, c.text, c.metadata, vectors[k]) for k, c in enumerate(new_chunks)
        ]
        new_ids = {c.id for c in new_chunks}
        replaced_docs = [ids[i] for i in indexes if existing.get(ids[i])]
        previous = (
            self.store.get(
                collection, where={DOCUMENT_ID: {"$in": replaced_docs}}, with_content=True
            )
            if replaced_docs
            else []
        )
        stale = [c.id for c in previous if c.id not in new_ids]
        try:
            self.store.upsert(collection, new_chunks)
            self.store.delete(collection, stale)
        except Exception:
            self._restore(collection, new_ids, previous)
            raise
        return chunk_counts, new_chunks

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

    def _restore(self, collection: str, new_ids: set[str], previous: list[StoredChunk]) -> None:
        """Undo a failed write: drop what it added and put the previous chunks back."""
        previous_ids = {c.id for c in previous}
        try:
            self.store.delete(collection, sorted(new_ids - previous_ids))
            self.store.upsert(collection, previous)
            log.warning("write failed; restored %d previous chunks", len(previous))
        except Exception:
            # The store is unreachable; re-ingesting the same documents repairs them, because
            # partial documents never count as unchanged.
            log.exception("write failed and could not be undone; re-ingest these documents")

    # -- documents ----------------------------------------------------------------------------

    def get_document(self, document_id: str, collection: str | None = None) -> dict[str, Any]:
        """Return a stored document's chunk count, content hash and metadata."""
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        chunks = self.store.get(name, where={DOCUMENT_ID: document_id}, with_content=True)
        if not chunks:
            raise DocumentNotFound(f"No document {document_id!r} in collection {name!r}.")
        chunks.sort(key=lambda c: int(c.metadata[POSITION]))
        return {
            "id": document_id,
            "collection": name,
            "chunks": len(chunks),
            "content_hash": chunks[0].metadata.get(CONTENT_HASH),
            "metadata": _user_metadata(chunks[0].metadata),
            "chunk_texts": [c.text for c in chunks],
        }

    def list_documents(
        self, collection: str | None = None, *, limit: int = 50, offset: int = 0
    ) -> dict[str, Any]:
        """Return a page of the collection's documents, newest first, and how many there are."""
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        # A document's first chunk carries what the list shows; every document has one. All are
        # read (metadata only) to order them: Chroma returns them in its own order.
        everything = self.store.get(name, where={POSITION: 0})
        everything.sort(
            key=lambda c: (
                -float(c.metadata.get(INGESTED_AT, 0) or 0),
                str(c.metadata[DOCUMENT_ID]),
            )
        )
        total = len(everything)
        firsts = everything[offset : offset + limit]
        documents = []
        for chunk in firsts:
            metadata = chunk.metadata
            ingested_at = metadata.get(INGESTED_AT)
            documents.append(
                {
                    "id": str(metadata.get(DOCUMENT_ID, "")),
                    "title": metadata.get("title"),
                    "source": metadata.get("source"),
                    "type": metadata.get("type"),
                    "chunks": int(metadata.get(CHUNK_COUNT, 0)),
                    "ingested_at": _iso_time(ingested_at) if ingested_at is not None else None,
                    # The first chunk's page and section are not the document's.
                    "metadata": {
                        k: v
                        for k, v in _user_metadata(metadata).items()
                        if k not in ("page", "section")
                    },
                }
            )
        next_offset = offset + len(firsts)
        return {
            "collection": name,
            "documents": documents,
            "total": total,
            "offset": offset,
            "limit": limit,
            "next_offset": next_offset if next_offset < total else None,
        }

    def delete_document(self, document_id: str, collection: str | None = None) -> int:
        """Delete all chunks of a document; return how many there were."""
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        with self._write_lock:
            chunks = self.store.get(name, where={DOCUMENT_ID: document_id})
            if not chunks:
                raise DocumentNotFound(f"No document {document_id!r} in collection {name!r}.")
            self.store.delete(name, [c.id for c in chunks])
            self.lexical.record_write(name, [document_id])
        return len(chunks)

    def delete_documents_of_source(
        self, source: str, keep: set[str], collection: str | None = None
    ) -> list[str]:
        """Delete the documents read from file ``source`` that are not in ``keep``.

        A file uploaded again replaces what it held: a CSV row edited since has a new id, and
        its old version must not stay searchable beside it.
        """
        name = self.collection(collection)
        firsts = self.store.get(name, where={"$and": [{"source": source}, {POSITION: 0}]})
        stale = sorted({str(c.metadata[DOCUMENT_ID]) for c in firsts} - keep)
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
            self.store.delete_collection(name)
            self.lexical.record_write(name, [], kind="drop_collection")

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
            rows = self.store.query(name, vector, top_k, where)
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
        chunks = self.store.count(name)
        documents = len(self.store.get(name, where={POSITION: 0}))
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
