"""Vector storage: the ``VectorStore`` interface and its ChromaDB implementation.

Every chromadb and transport error is translated in ``_translate_errors``, once, into the shared
error tree: an unreachable server is a 503, a slow one a 504, an unknown collection a 404.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from qa_common.errors import (
    BadGateway,
    DependencyTimeout,
    DependencyUnavailable,
    ValidationFailed,
)
from retriever_service.dir_lock import lock_directory
from retriever_service.errors import (
    CollectionNotFound,
    EmbeddingModelMismatch,
    MigrationRequired,
)
from retriever_service.versions import VersionRecord

log = logging.getLogger(__name__)

Metadata = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class StoredChunk:
    """A chunk as the store holds it."""

    id: str
    text: str | None
    metadata: Metadata
    embedding: np.ndarray | None = None


@dataclass(frozen=True)
class ScoredChunk:
    """A chunk returned by a query, with its cosine distance to the query."""

    id: str
    text: str | None
    metadata: Metadata
    distance: float


@dataclass(frozen=True)
class CollectionSpec:
    """What a collection must have been built with: vectors from other models do not mix."""

    embedding_model: str
    dimension: int


class VectorStore(Protocol):
    """Stores chunk vectors with their text and metadata, and finds the nearest ones."""

    description: str

    def heartbeat(self) -> None: ...
    def list_collections(self) -> list[str]: ...
    def ensure_collection(self, name: str, *, create: bool) -> None: ...
    def delete_collection(self, name: str) -> None: ...
    def forget_collection(self, name: str) -> None: ...
    def get(
        self,
        collection: str,
        *,
        where: dict[str, Any],
        with_content: bool = False,
        with_text: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[StoredChunk]: ...
    def upsert(self, collection: str, chunks: Sequence[StoredChunk]) -> None: ...
    def delete(self, collection: str, ids: Sequence[str]) -> None: ...
    def query(
        self,
        collection: str,
        embedding: np.ndarray,
        top_k: int,
        where: dict[str, Any] | None,
        *,
        with_content: bool = True,
    ) -> list[ScoredChunk]: ...
    def count(self, collection: str) -> int: ...
    def get_by_ids(
        self,
        collection: str,
        ids: Sequence[str],
        *,
        where: dict[str, Any] | None = None,
        with_content: bool = False,
        with_text: bool = False,
        with_embedding: bool = False,
    ) -> list[StoredChunk]: ...
    def scan_metadata(self, collection: str) -> Iterator[list[StoredChunk]]: ...
    def append_write_record(self, record_id: str, metadata: Metadata) -> None: ...
    def write_record_count(self) -> int: ...
    def read_write_records(
        self, offset: int = 0, limit: int | None = None
    ) -> list[tuple[str, Metadata]]: ...
    def put_versions(self, records: Sequence[VersionRecord]) -> None: ...
    def get_versions(self, collection: str, document_ids: Sequence[str]) -> list[VersionRecord]: ...
    def all_versions(self, collection: str) -> list[VersionRecord]: ...
    def delete_versions(self, records: Sequence[VersionRecord]) -> None: ...


# One Chroma collection shared by every retriever on a store: a record per acknowledged write, so
# that each replica can tell cheaply (by its count) whether its lexical index is behind.
WRITE_LOG_COLLECTION = "retriever-write-log"
# One Chroma collection shared by every retriever on a store: a record per committed document
# version (see ``versions``); a document's current version is its highest record.
VERSIONS_COLLECTION = "retriever-versions"
_RESERVED_COLLECTIONS = (WRITE_LOG_COLLECTION, VERSIONS_COLLECTION)
# Collections carry the layout their chunks follow; layout 2 keys chunks by document version.
STORE_LAYOUT = 2
# Pages of ids and metadata read when scanning a whole collection.
SCAN_PAGE = 5000
# Document ids per version-record read.
_VERSION_BATCH = 500
# Tries of a read that meets a Chroma server's transient segment error (see ``_read``).
_TRANSIENT_READ_TRIES = 4


def _include(with_content: bool, with_text: bool, with_embedding: bool = False) -> list[str]:
    if with_embedding and not with_text:
        # Vectors alone (hybrid search scores its lexical candidates): metadata is read later,
        # for the few chunks returned.
        return ["embeddings"]
    if with_content or with_embedding:
        return ["metadatas", "documents", "embeddings"]
    return ["metadatas", "documents"] if with_text else ["metadatas"]


class ChromaStore:
    """A ``VectorStore`` on ChromaDB: embedded on a directory, or a Chroma server over HTTP."""

    def __init__(
        self,
        spec: CollectionSpec,
        *,
        path: str | None = None,
        host: str | None = None,
        port: int = 8000,
        ssl: bool = False,
    ) -> None:
        if not path and not host:
            raise ValueError("ChromaStore needs a path (embedded) or a host (server)")
        if path and not host:
            lock_directory(path)
        self.spec = spec
        self._path = path
        self._host = host
        self._port = port
        self._ssl = ssl
        self.description = f"chroma server {host}:{port}" if host else f"embedded chroma at {path}"
        self._client: Any = None
        self._collections: dict[str, Any] = {}
        # Set by the migration only: open collections written before document versions existed.
        self.accept_legacy_layout = False
        # Reentrant: a failed connect in _get_client calls _forget_connection under the lock.
        self._lock = threading.RLock()

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=False)
        if self._host:
            return chromadb.HttpClient(
                host=self._host, port=self._port, ssl=self._ssl, settings=settings
            )
        return chromadb.PersistentClient(path=self._path, settings=settings)

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                with self._translate_errors():
                    self._client = self._connect()
            return self._client

    def _forget_connection(self) -> None:
        # A server that went away may come back elsewhere: reconnect and re-resolve collections.
        if self._host:
            with self._lock:
                self._client = None
                self._collections.clear()

    @contextlib.contextmanager
    def _translate_errors(self, collection: str | None = None) -> Iterator[None]:
        import chromadb.errors as chroma_errors
        import httpx

        try:
            yield
        except (CollectionNotFound, EmbeddingModelMismatch):
            raise
        except chroma_errors.NotFoundError as exc:
            if collection:
                self._collections.pop(collection, None)
            raise CollectionNotFound(f"Collection {collection!r} does not exist.") from exc
        except chroma_errors.InvalidArgumentError as exc:
            raise ValidationFailed(f"The vector store rejected the request: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise DependencyTimeout(
                f"The vector store ({self.description}) did not answer in time.",
                dependency="chroma",
            ) from exc
        except (httpx.TransportError, ConnectionError) as exc:
            self._forget_connection()
            raise DependencyUnavailable(
                f"The vector store ({self.description}) cannot be reached.", dependency="chroma"
            ) from exc
        except ValueError as exc:
            # chromadb reports a failed connection at client creation as a bare ValueError.
            if "connect" in str(exc).lower():
                self._forget_connection()
                raise DependencyUnavailable(
                    f"The vector store ({self.description}) cannot be reached.",
                    dependency="chroma",
                ) from exc
            raise
        except chroma_errors.ChromaError as exc:
            raise BadGateway(f"The vector store failed: {exc}", dependency="chroma") from exc

    @staticmethod
    def _read(call: Any) -> Any:
        """Run a read; retry the transient error of a Chroma 1.5 server loading a new segment.

        Under concurrent writes, a query can find a collection's HNSW segment not yet on disk
        ("Error creating hnsw segment reader: Nothing found on disk", chroma-core/chroma#4212);
        it answers a moment later. Reads only: they change nothing, so trying again is safe.
        """
        import chromadb.errors as chroma_errors

        for attempt in range(_TRANSIENT_READ_TRIES):
            try:
                return call()
            except chroma_errors.ChromaError as exc:
                transient = "hnsw segment reader" in str(exc)
                if not transient or attempt == _TRANSIENT_READ_TRIES - 1:
                    raise
                log.info("transient Chroma read error, trying again: %s", exc)
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    # -- collections --------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Raise when the store cannot be reached."""
        client = self._get_client()
        with self._translate_errors():
            client.heartbeat()

    def list_collections(self) -> list[str]:
        client = self._get_client()
        with self._translate_errors():
            return sorted(
                c.name for c in client.list_collections() if c.name not in _RESERVED_COLLECTIONS
            )

    def ensure_collection(self, name: str, *, create: bool) -> None:
        """Open (or create) a collection and check it was built with our embedding model."""
        self._collection(name, create=create)

    def _collection(self, name: str, *, create: bool = False) -> Any:
        if name in _RESERVED_COLLECTIONS:
            raise ValidationFailed(
                f"Collection name {name!r} is reserved for the retriever's own records.",
                details=[{"field": "collection", "message": "reserved name"}],
            )
        cached = self._collections.get(name)
        if cached is not None:
            return cached
        client = self._get_client()
        with self._translate_errors(name):
            if create:
                collection = client.get_or_create_collection(
                    name,
                    configuration={"hnsw": {"space": "cosine"}},
                    metadata={
                        "embedding_model": self.spec.embedding_model,
                        "dimension": self.spec.dimension,
                        "layout": STORE_LAYOUT,
                    },
                    embedding_function=None,
                )
            else:
                collection = client.get_collection(name, embedding_function=None)
        self._check_spec(name, collection)
        self._collections[name] = collection
        return collection

    def _check_spec(self, name: str, collection: Any) -> None:
        metadata = collection.metadata or {}
        model = metadata.get("embedding_model")
        dimension = metadata.get("dimension")
        space = ((collection.configuration or {}).get("hnsw") or {}).get("space")
        if model != self.spec.embedding_model or dimension != self.spec.dimension:
            raise EmbeddingModelMismatch(
                f"Collection {name!r} holds vectors of {model!r} ({dimension} dimensions); this "
                f"retriever embeds with {self.spec.embedding_model!r} ({self.spec.dimension}). "
                "Use another collection or re-ingest into a new one."
            )
        if space != "cosine":
            raise EmbeddingModelMismatch(
                f"Collection {name!r} uses {space!r} distance; scores need cosine."
            )
        if metadata.get("layout") != STORE_LAYOUT and not self.accept_legacy_layout:
            raise MigrationRequired(
                f"Collection {name!r} was written by an earlier retriever, before document "
                "versions; run `python -m retriever_service.migrate` once, with this retriever's "
                "settings, to re-key it (see README, Upgrading)."
            )

    def layout(self, name: str) -> int:
        """Return the chunk layout a collection follows (1: written before document versions)."""
        collection = self._collection(name)
        return int((collection.metadata or {}).get("layout", 1))

    def set_layout(self, name: str, layout: int) -> None:
        """Record that every chunk of a collection follows ``layout``."""
        collection = self._collection(name)
        with self._translate_errors(name):
            collection.modify(metadata={**(collection.metadata or {}), "layout": layout})
        self._collections.pop(name, None)

    def forget_collection(self, name: str) -> None:
        """Drop the cached handle: another replica deleted (and may recreate) the collection."""
        self._collections.pop(name, None)

    def delete_collection(self, name: str) -> None:
        client = self._get_client()
        with self._translate_errors(name):
            client.delete_collection(name)
        self._collections.pop(name, None)

    # -- chunks -------------------------------------------------------------------------------

    def get(
        self,
        collection: str,
        *,
        where: dict[str, Any],
        with_content: bool = False,
        with_text: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[StoredChunk]:
        """Return the chunks ``where`` selects, in store order; a page of them with ``limit``."""
        col = self._collection(collection)
        include = _include(with_content, with_text)
        with self._translate_errors(collection):
            result = self._read(
                lambda: col.get(where=where, include=include, limit=limit, offset=offset or None)
            )
        return self._chunks(result, include)

    def upsert(self, collection: str, chunks: Sequence[StoredChunk]) -> None:
        if not chunks:
            return
        col = self._collection(collection, create=True)
        client = self._get_client()
        with self._translate_errors(collection):
            batch = max(1, int(client.get_max_batch_size()))
            for first in range(0, len(chunks), batch):
                part = chunks[first : first + batch]
                col.upsert(
                    ids=[c.id for c in part],
                    embeddings=np.stack([c.embedding for c in part]),
                    documents=[c.text for c in part],
                    metadatas=[c.metadata for c in part],
                )

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        col = self._collection(collection)
        with self._translate_errors(collection):
            col.delete(ids=list(ids))

    def query(
        self,
        collection: str,
        embedding: np.ndarray,
        top_k: int,
        where: dict[str, Any] | None,
        *,
        with_content: bool = True,
    ) -> list[ScoredChunk]:
        """Return the nearest chunks; without content, only their ids and distances."""
        col = self._collection(collection)
        include = ["documents", "metadatas", "distances"] if with_content else ["distances"]
        with self._translate_errors(collection):
            result = self._read(
                lambda: col.query(
                    query_embeddings=[np.asarray(embedding, dtype=np.float32)],
                    n_results=top_k,
                    where=where or None,
                    include=include,
                )
            )
        ids = result["ids"][0]
        return [
            ScoredChunk(
                id=chunk_id,
                text=result["documents"][0][i] if with_content else None,
                metadata=dict(result["metadatas"][0][i] or {}) if with_content else {},
                distance=float(result["distances"][0][i]),
            )
            for i, chunk_id in enumerate(ids)
        ]

    def count(self, collection: str) -> int:
        col = self._collection(collection)
        with self._translate_errors(collection):
            return int(col.count())

    def get_by_ids(
        self,
        collection: str,
        ids: Sequence[str],
        *,
        where: dict[str, Any] | None = None,
        with_content: bool = False,
        with_text: bool = False,
        with_embedding: bool = False,
    ) -> list[StoredChunk]:
        """Return the chunks with these ids that exist (and pass ``where``), in store order."""
        if not ids:
            return []
        col = self._collection(collection)
        include = _include(with_content, with_text, with_embedding)
        with self._translate_errors(collection):
            result = self._read(
                lambda: col.get(ids=list(ids), where=where or None, include=include)
            )
        return self._chunks(result, include)

    def scan_metadata(self, collection: str) -> Iterator[list[StoredChunk]]:
        """Yield every chunk's id and metadata, a page at a time."""
        col = self._collection(collection)
        offset = 0
        while True:
            with self._translate_errors(collection):
                result = col.get(include=["metadatas"], limit=SCAN_PAGE, offset=offset)
            page = self._chunks(result, ["metadatas"])
            if page:
                yield page
            if len(page) < SCAN_PAGE:
                return
            offset += len(page)

    @staticmethod
    def _chunks(result: Any, include: list[str]) -> list[StoredChunk]:
        ids = result["ids"]
        metadatas = result.get("metadatas") or [{}] * len(ids)
        texts = result.get("documents") if "documents" in include else None
        embeddings = result.get("embeddings") if "embeddings" in include else None
        return [
            StoredChunk(
                id=chunk_id,
                text=texts[i] if texts is not None else None,
                metadata=dict(metadatas[i] or {}),
                embedding=np.asarray(embeddings[i], dtype=np.float32)
                if embeddings is not None
                else None,
            )
            for i, chunk_id in enumerate(ids)
        ]

    # -- write log ----------------------------------------------------------------------------

    def _own_collection(self, name: str, purpose: str) -> Any:
        """Open (or create) one of the retriever's own collections: the write log, the versions."""
        cached = self._collections.get(name)
        if cached is not None:
            return cached
        client = self._get_client()
        with self._translate_errors(name):
            collection = client.get_or_create_collection(
                name, metadata={"purpose": purpose}, embedding_function=None
            )
        self._collections[name] = collection
        return collection

    def _write_log(self) -> Any:
        return self._own_collection(
            WRITE_LOG_COLLECTION, "one record per acknowledged write, for lexical indexes"
        )

    def append_write_record(self, record_id: str, metadata: Metadata) -> None:
        """Add one write's record; records are never changed or removed, so the count only grows."""
        log_collection = self._write_log()
        with self._translate_errors(WRITE_LOG_COLLECTION):
            # Chroma stores a vector for every record; one constant dimension costs nothing.
            log_collection.add(ids=[record_id], embeddings=[[1.0]], metadatas=[metadata])

    def write_record_count(self) -> int:
        log_collection = self._write_log()
        with self._translate_errors(WRITE_LOG_COLLECTION):
            return int(log_collection.count())

    def read_write_records(
        self, offset: int = 0, limit: int | None = None
    ) -> list[tuple[str, Metadata]]:
        """Return write records from ``offset`` on, in the order the store lists them."""
        log_collection = self._write_log()
        with self._translate_errors(WRITE_LOG_COLLECTION):
            result = log_collection.get(include=["metadatas"], offset=offset, limit=limit)
        metadatas = result.get("metadatas") or [{}] * len(result["ids"])
        return [(i, dict(m or {})) for i, m in zip(result["ids"], metadatas, strict=True)]

    # -- document versions --------------------------------------------------------------------

    def _versions(self) -> Any:
        return self._own_collection(
            VERSIONS_COLLECTION, "one record per committed document version"
        )

    def put_versions(self, records: Sequence[VersionRecord]) -> None:
        """Commit version records; each one is a single-record write, applied whole."""
        if not records:
            return
        versions = self._versions()
        with self._translate_errors(VERSIONS_COLLECTION):
            versions.upsert(
                ids=[r.record_id for r in records],
                embeddings=[[1.0]] * len(records),
                metadatas=[
                    {
                        "collection": r.collection,
                        "document_id": r.document_id,
                        "version": r.version,
                        "seq": r.seq,
                        "state": r.state,
                        "content_hash": r.content_hash,
                        "chunk_count": r.chunk_count,
                        "ingested_at": r.ingested_at,
                    }
                    for r in records
                ],
            )

    def get_versions(self, collection: str, document_ids: Sequence[str]) -> list[VersionRecord]:
        """Return the version records of these documents of a collection."""
        versions = self._versions()
        unique = list(dict.fromkeys(document_ids))
        found: list[VersionRecord] = []
        for first in range(0, len(unique), _VERSION_BATCH):
            batch = unique[first : first + _VERSION_BATCH]
            # Filtered on the document alone and the collection here: Chroma answers an $and
            # of the two four times slower.
            with self._translate_errors(VERSIONS_COLLECTION):
                result = versions.get(where={"document_id": {"$in": batch}}, include=["metadatas"])
            found.extend(r for r in self._records(result) if r.collection == collection)
        return found

    def all_versions(self, collection: str) -> list[VersionRecord]:
        """Return every version record of a collection."""
        versions = self._versions()
        found: list[VersionRecord] = []
        offset = 0
        while True:
            with self._translate_errors(VERSIONS_COLLECTION):
                result = versions.get(
                    where={"collection": collection},
                    include=["metadatas"],
                    limit=SCAN_PAGE,
                    offset=offset,
                )
            page = self._records(result)
            found.extend(page)
            if len(result["ids"]) < SCAN_PAGE:
                return found
            offset += len(result["ids"])

    def delete_versions(self, records: Sequence[VersionRecord]) -> None:
        if not records:
            return
        versions = self._versions()
        with self._translate_errors(VERSIONS_COLLECTION):
            versions.delete(ids=[r.record_id for r in records])

    @staticmethod
    def _records(result: Any) -> list[VersionRecord]:
        records = []
        for metadata in result.get("metadatas") or []:
            m = metadata or {}
            records.append(
                VersionRecord(
                    collection=str(m.get("collection", "")),
                    document_id=str(m.get("document_id", "")),
                    version=str(m.get("version", "")),
                    seq=int(m.get("seq", 0)),
                    state="deleted" if m.get("state") == "deleted" else "live",
                    content_hash=str(m.get("content_hash", "")),
                    chunk_count=int(m.get("chunk_count", 0)),
                    ingested_at=float(m.get("ingested_at", 0.0)),
                )
            )
        return records
