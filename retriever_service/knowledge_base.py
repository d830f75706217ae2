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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from qa_common.errors import ValidationFailed
from retriever_service.chunking import Chunker, chunk_id
from retriever_service.embedder import Embedder
from retriever_service.errors import DocumentNotFound
from retriever_service.store import Metadata, StoredChunk, VectorStore

log = logging.getLogger(__name__)

# Keys the retriever keeps in each chunk's metadata; user metadata may not start with "_".
DOCUMENT_ID = "_document_id"
POSITION = "_position"
CHUNK_COUNT = "_chunk_count"
CONTENT_HASH = "_content_hash"
START = "_start"
END = "_end"
RESERVED_PREFIX = "_"


@dataclass(frozen=True)
class DocumentInput:
    """A document to ingest; without an id, its id is a hash of its text."""

    text: str
    id: str | None = None
    metadata: Metadata = field(default_factory=dict)


@dataclass(frozen=True)
class IngestOutcome:
    id: str
    status: Literal["created", "updated", "unchanged"]
    chunks: int


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


@dataclass(frozen=True)
class SearchResult:
    hits: list[SearchHit]
    embed_ms: float
    query_ms: float


def default_document_id(text: str) -> str:
    """Return the id a document gets when none is given: a hash of its text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


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
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.chunker = chunker
        self.default_collection = default_collection
        # Writes in one process are serialized so that a document's check-then-replace is atomic.
        self._write_lock = threading.Lock()

    def collection(self, name: str | None) -> str:
        return name or self.default_collection

    def content_hash(self, document: DocumentInput) -> str:
        """Hash what determines a document's chunks and vectors: text, metadata, settings."""
        material = json.dumps(
            {
                "text": document.text,
                "metadata": document.metadata,
                "chunker": self.chunker.signature,
                "model": self.embedder.model_name,
            },
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(material.encode("utf-8")).hexdigest()

    # -- ingestion ----------------------------------------------------------------------------

    def ingest(
        self, documents: Sequence[DocumentInput], collection: str | None = None
    ) -> list[IngestOutcome]:
        """Upsert documents: new ones are added, changed ones replaced, unchanged ones skipped."""
        name = self.collection(collection)
        ids = [doc.id or default_document_id(doc.text) for doc in documents]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
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
                written = self._write(name, documents, ids, hashes, to_write, existing)
                for i in to_write:
                    status = "updated" if existing.get(ids[i]) else "created"
                    outcomes[i] = IngestOutcome(ids[i], status, written[i])
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
    ) -> dict[int, int]:
        new_chunks: list[StoredChunk] = []
        texts: list[str] = []
        chunk_counts: dict[int, int] = {}
        for i in indexes:
            doc = documents[i]
            pieces = self.chunker.split(doc.text)
            if not pieces:
                raise ValidationFailed(
                    f"Document {ids[i]!r} has no text to index.",
                    details=[{"field": f"documents.{i}.text", "message": "no text"}],
                )
            chunk_counts[i] = len(pieces)
            for piece in pieces:
                metadata: Metadata = {
                    **doc.metadata,
                    DOCUMENT_ID: ids[i],
                    POSITION: piece.position,
                    CHUNK_COUNT: len(pieces),
                    CONTENT_HASH: hashes[i],
                    START: piece.start,
                    END: piece.end,
                }
                new_chunks.append(
                    StoredChunk(
                        id=chunk_id(ids[i], piece.position), text=piece.text, metadata=metadata
                    )
                )
                texts.append(piece.text)
        # Embed everything before the first write: a failure here leaves the store untouched.
        vectors = self.embedder.encode(texts)
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
        return chunk_counts

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

    def delete_document(self, document_id: str, collection: str | None = None) -> int:
        """Delete all chunks of a document; return how many there were."""
        name = self.collection(collection)
        self.store.ensure_collection(name, create=name == self.default_collection)
        with self._write_lock:
            chunks = self.store.get(name, where={DOCUMENT_ID: document_id})
            if not chunks:
                raise DocumentNotFound(f"No document {document_id!r} in collection {name!r}.")
            self.store.delete(name, [c.id for c in chunks])
        return len(chunks)

    # -- search -------------------------------------------------------------------------------

    def search(
        self,
        query: str,
        *,
        top_k: int,
        min_score: float | None = None,
        where: dict[str, Any] | None = None,
        collection: str | None = None,
    ) -> SearchResult:
        """Return the chunks nearest to the query, best first, scored by cosine similarity."""
        name = self.collection(collection)
        # Fail on an unknown collection before paying for the embedding.
        self.store.ensure_collection(name, create=name == self.default_collection)
        started = time.perf_counter()
        vector = self.embedder.encode([query])[0]
        embedded = time.perf_counter()
        rows = self.store.query(name, vector, top_k, where)
        queried = time.perf_counter()
        hits = []
        for row in rows:
            score = 1.0 - row.distance
            if min_score is not None and score < min_score:
                continue
            start, end = row.metadata.get(START), row.metadata.get(END)
            hits.append(
                SearchHit(
                    chunk_id=row.id,
                    document_id=str(row.metadata.get(DOCUMENT_ID, "")),
                    position=int(row.metadata.get(POSITION, 0)),
                    text=row.text,
                    score=round(score, 6),
                    metadata=_user_metadata(row.metadata),
                    start=int(start) if start is not None else None,
                    end=int(end) if end is not None else None,
                )
            )
        return SearchResult(
            hits, embed_ms=(embedded - started) * 1000, query_ms=(queried - embedded) * 1000
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
