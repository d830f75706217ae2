"""Keep a process's lexical index equal to what the vector store holds, across replicas.

Every acknowledged write appends one record (a fresh id, the collection, the document ids) to a
write log kept in the store itself. Records are never changed or removed, so the log's count only
grows, and concurrent writers each add their own record: none can be lost, unlike a shared
counter. Before a lexical search, a replica compares the log's count with what it has read (one
cheap call) and, when behind, re-reads the named documents from the store. A collection is first
loaded, and periodically re-checked, by reconciling the index against the store's own chunk ids
and content hashes, so that the index stays a pure function of what is stored even when a writer
died between its write and its record.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Literal

from retriever_service.chunk_keys import CONTENT_HASH, DOCUMENT_ID
from retriever_service.errors import CollectionNotFound
from retriever_service.lexical import LexicalChunk, LexicalIndex
from retriever_service.store import StoredChunk, VectorStore

log = logging.getLogger(__name__)

WriteKind = Literal["documents", "drop_collection"]
# Documents re-read from the store per call, and chunk ids per fetch when reconciling.
_BATCH = 500


def lexical_chunks(chunks: Iterable[StoredChunk]) -> list[LexicalChunk]:
    """Turn stored chunks (with text) into what the lexical index keeps."""
    return [
        LexicalChunk(
            chunk_id=c.id,
            document_id=str(c.metadata.get(DOCUMENT_ID, "")),
            content_hash=str(c.metadata.get(CONTENT_HASH, "")),
            text=c.text or "",
        )
        for c in chunks
    ]


class LexicalSync:
    """Brings the lexical index up to date with the store before each lexical search."""

    def __init__(
        self, store: VectorStore, index: LexicalIndex, *, reconcile_interval_s: float = 300.0
    ) -> None:
        self.store = store
        self.index = index
        self.reconcile_interval_s = reconcile_interval_s
        self._lock = threading.RLock()
        # Log records read so far (by id), and those this process wrote and applied itself.
        self._read_ids: set[str] = set()
        self._own_ids: set[str] = set()
        self._unlogged: dict[str, dict[str, str | float]] = {}
        self._log_position = 0
        # Collection → monotonic time of its last reconciliation; only these are kept in step.
        self._loaded: dict[str, float] = {}
        self._reconciling: set[str] = set()
        # Documents re-read while a background reconciliation of their collection was scanning.
        self._touched: dict[str, set[str]] = {}
        self.last_check_ms = 0.0

    # -- writers ------------------------------------------------------------------------------

    def record_write(
        self,
        collection: str,
        document_ids: Sequence[str],
        *,
        kind: WriteKind = "documents",
        chunks: Sequence[LexicalChunk] = (),
    ) -> None:
        """Log a completed write for every replica and apply it to this process's index."""
        record_id = uuid.uuid4().hex
        record: dict[str, str | float] = {
            "collection": collection,
            "kind": kind,
            "documents": json.dumps(sorted(set(document_ids)), ensure_ascii=False),
            "at": time.time(),
        }
        with self._lock:
            if collection in self._loaded:
                if kind == "drop_collection":
                    self._forget(collection)
                else:
                    self.index.replace_documents(collection, document_ids, chunks)
                    self._touch(collection, document_ids)
            self._own_ids.add(record_id)
            # A retried ingest of the same documents is "unchanged" and logs nothing: a record
            # that could not be appended is kept and appended with the next write or search.
            self._unlogged[record_id] = record
        self._flush_unlogged()

    def _flush_unlogged(self) -> None:
        with self._lock:
            pending = list(self._unlogged.items())
        for record_id, record in pending:
            self.store.append_write_record(record_id, record)
            with self._lock:
                self._unlogged.pop(record_id, None)

    # -- readers ------------------------------------------------------------------------------

    def ensure_fresh(self, collection: str) -> None:
        """Apply every write acknowledged before now to the collection's lexical index."""
        started = time.perf_counter()
        if self._unlogged:
            self._flush_unlogged()
        with self._lock:
            if collection not in self._loaded:
                self._catch_up()
                self._reconcile(collection)
                self._loaded[collection] = time.monotonic()
            else:
                self._catch_up()
            due = time.monotonic() - self._loaded.get(collection, 0.0) > self.reconcile_interval_s
            if due and collection in self._loaded and collection not in self._reconciling:
                self._reconciling.add(collection)
                self._touched[collection] = set()
                threading.Thread(
                    target=self._reconcile_in_background,
                    args=(collection,),
                    name=f"lexical-reconcile-{collection}",
                    daemon=True,
                ).start()
        self.last_check_ms = (time.perf_counter() - started) * 1000

    def _catch_up(self) -> None:
        count = self.store.write_record_count()
        if count == self._log_position:
            return
        if count < self._log_position:
            # The log only grows, so the store was wiped or replaced: start over from it.
            log.warning(
                "the write log shrank (%d < %d); reconciling in full", count, self._log_position
            )
            self._read_ids.clear()
            self._log_position = 0
            for collection in list(self._loaded):
                self._reconcile(collection)
        records = self.store.read_write_records(self._log_position, count - self._log_position)
        if len(records) != count - self._log_position or any(
            record_id in self._read_ids for record_id, _ in records
        ):
            # The store did not list its records in write order: find the unread ones among all.
            records = [r for r in self.store.read_write_records() if r[0] not in self._read_ids]
        for record_id, metadata in records:
            self._read_ids.add(record_id)
            if record_id in self._own_ids:
                self._own_ids.discard(record_id)
                continue
            self._apply(metadata)
        self._log_position = len(self._read_ids)

    def _apply(self, record: dict[str, object]) -> None:
        collection = str(record.get("collection", ""))
        if collection not in self._loaded:
            return  # reconciled in full when first searched
        if record.get("kind") == "drop_collection":
            self._forget(collection)
            return
        try:
            document_ids = [str(d) for d in json.loads(str(record.get("documents", "[]")))]
        except json.JSONDecodeError:
            log.warning("unreadable write record for %s; reconciling it in full", collection)
            self._reconcile(collection)
            return
        self._reread_documents(collection, document_ids)

    def _reread_documents(self, collection: str, document_ids: Sequence[str]) -> None:
        for first in range(0, len(document_ids), _BATCH):
            batch = list(document_ids[first : first + _BATCH])
            try:
                stored = self.store.get(
                    collection, where={DOCUMENT_ID: {"$in": batch}}, with_text=True
                )
            except CollectionNotFound:
                self._forget(collection)
                return
            self.index.replace_documents(collection, batch, lexical_chunks(stored))
            self._touch(collection, batch)

    def _touch(self, collection: str, document_ids: Iterable[str]) -> None:
        if collection in self._touched:
            self._touched[collection].update(document_ids)

    def _forget(self, collection: str) -> None:
        self.index.drop_collection(collection)
        self._loaded.pop(collection, None)
        self.store.forget_collection(collection)

    # -- reconciliation -----------------------------------------------------------------------

    def _scan(self, collection: str) -> dict[str, str] | None:
        """Return chunk id → content hash as stored, or None when the collection is gone."""
        stored: dict[str, str] = {}
        try:
            for page in self.store.scan_metadata(collection):
                for chunk in page:
                    stored[chunk.id] = str(chunk.metadata.get(CONTENT_HASH, ""))
        except CollectionNotFound:
            return None
        return stored

    def _reconcile(self, collection: str) -> None:
        stored = self._scan(collection)
        if stored is None:
            self.index.drop_collection(collection)
            return
        self._apply_difference(collection, stored)

    def _apply_difference(self, collection: str, stored: dict[str, str]) -> None:
        indexed = self.index.fingerprint(collection)
        stale = [cid for cid, digest in indexed.items() if stored.get(cid) != digest]
        missing = [cid for cid, digest in stored.items() if indexed.get(cid) != digest]
        if not stale and not missing:
            return
        log.info(
            "lexical index of %s: %d chunks to drop, %d to add",
            collection,
            len(stale),
            len(missing),
        )
        self.index.replace_chunks(collection, stale, [])
        for first in range(0, len(missing), _BATCH):
            fetched = self.store.get_by_ids(
                collection, missing[first : first + _BATCH], with_text=True
            )
            self.index.replace_chunks(collection, [], lexical_chunks(fetched))

    def _reconcile_in_background(self, collection: str) -> None:
        try:
            # Scan without the lock: searches go on with the current index meanwhile.
            stored = self._scan(collection)
            with self._lock:
                if collection not in self._loaded:
                    return
                if stored is None:
                    self._forget(collection)
                    return
                touched = self._touched.get(collection, set())
                self._apply_difference(collection, stored)
                # What the log brought in during the scan is newer than the scan: re-read it.
                self._reread_documents(collection, sorted(touched))
                self._loaded[collection] = time.monotonic()
        except Exception:
            log.exception("background reconciliation of %s failed; retried later", collection)
        finally:
            with self._lock:
                self._reconciling.discard(collection)
                self._touched.pop(collection, None)
