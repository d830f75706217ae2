"""The retriever's Flask app factory and routes."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import copy_context
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify, request, stream_with_context

from qa_common.errors import NotReady, ServiceError, ValidationFailed
from qa_common.request_context import get_request_id
from qa_common.web import (
    CachedReadiness,
    create_service_app,
    parse_body,
    parse_query,
    validate,
)
from retriever_service.api_spec import openapi_document
from retriever_service.chunking import Chunker
from retriever_service.config import RetrieverConfig, load_config
from retriever_service.embedder import Embedder, load_embedder
from retriever_service.file_ingest import FileResult, UploadLimits, ingest_file, upload_name
from retriever_service.knowledge_base import DocumentInput, KnowledgeBase, SearchSettings
from retriever_service.lexical import LexicalIndex
from retriever_service.lexical_sync import LexicalSync
from retriever_service.parsing.model import Segment
from retriever_service.parsing.sandbox import FileParser
from retriever_service.schemas import (
    CollectionQuery,
    DocumentListQuery,
    EmbedRequest,
    IngestRequest,
    SearchRequest,
    UploadForm,
)
from retriever_service.store import ChromaStore, CollectionSpec, VectorStore

log = logging.getLogger(__name__)


def build_store(config: RetrieverConfig, embedder: Embedder) -> VectorStore:
    """Build the configured Chroma store: a server when CHROMA_HOST is set, else embedded."""
    spec = CollectionSpec(embedding_model=embedder.model_name, dimension=embedder.dimension)
    if config.uses_chroma_server:
        return ChromaStore(
            spec, host=config.chroma_host, port=config.chroma_port, ssl=config.chroma_ssl
        )
    return ChromaStore(spec, path=config.chroma_path)


def build_knowledge_base(
    config: RetrieverConfig,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
) -> KnowledgeBase:
    """Load the model and open the store: the heavy objects, built once per process."""
    if embedder is None:
        embedder = load_embedder(
            config.embedding_model,
            dtype=config.embedding_dtype,
            device=config.embedding_device,
            batch_size=config.embedding_batch_size,
            revision=config.embedding_revision,
        )
    if store is None:
        store = build_store(config, embedder)
    max_tokens = min(config.chunk_max_tokens or embedder.max_tokens, embedder.max_tokens)
    chunker = Chunker(
        embedder.token_spans, max_tokens, min(config.chunk_overlap_tokens, max_tokens // 2)
    )
    lexical = LexicalSync(
        store,
        LexicalIndex(config.lexical_index_file),
        reconcile_interval_s=config.lexical_reconcile_s,
    )
    return KnowledgeBase(
        embedder,
        store,
        chunker,
        default_collection=config.default_collection,
        lexical=lexical,
        search_settings=SearchSettings(
            mode=config.search_mode,
            fusion=config.hybrid_fusion,
            dense_weight=config.hybrid_dense_weight,
            candidates=config.hybrid_candidates,
        ),
        orphan_grace_s=config.orphan_grace_s,
    )


def _warm_lexical_index(kb: KnowledgeBase) -> None:
    try:
        kb.store.ensure_collection(kb.default_collection, create=True)
        kb.lexical.ensure_fresh(kb.default_collection)
    except Exception:
        log.warning(
            "could not load the lexical index at start; the first search will", exc_info=True
        )


def _sweep_store(kb: KnowledgeBase) -> None:
    """Remove what killed or beaten writes left in every collection; readers never see it."""
    try:
        collections = kb.store.list_collections()
    except Exception:
        log.warning("could not list collections to sweep", exc_info=True)
        return
    for name in collections:
        try:
            removed = kb.sweep(name)
        except Exception:
            log.warning("could not sweep collection %s", name, exc_info=True)
            continue
        if any(removed.values()):
            log.info(
                "swept %s: %d superseded versions, %d orphan chunks, %d records without chunks",
                name,
                removed["superseded_versions"],
                removed["orphan_chunks"],
                removed["records_without_chunks"],
            )
    log.info("sweep done (%d collections)", len(collections))


def _sweep_forever(kb: KnowledgeBase, interval_s: float) -> None:
    """Sweep at start, then every ``interval_s`` (0: only at start)."""
    while True:
        _sweep_store(kb)
        if interval_s <= 0:
            return
        time.sleep(interval_s)


NDJSON = "application/x-ndjson"


def _ingest_uploads(
    kb: KnowledgeBase,
    parser: FileParser,
    uploads: list[tuple[str | None, bytes]],
    collection: str | None,
    limits: UploadLimits,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Ingest each uploaded file on its own; one file's failure never stops the others."""
    started = time.perf_counter()
    results = []
    for index, (raw_name, data) in enumerate(uploads):
        name = upload_name(raw_name)
        if on_event:
            on_event({"event": "file", "file": name or raw_name, "index": index})
        if name is None:
            result = FileResult(
                raw_name or "", error={"code": "bad_name", "message": "the file has no usable name"}
            )
        else:
            tell = (lambda e, i=index: on_event({**e, "index": i})) if on_event else None
            result = ingest_file(kb, parser, name, data, collection, limits=limits, on_event=tell)
        results.append(result)
        if on_event:
            on_event({"event": "file_done", "index": index, **result.as_dict()})
    return {
        "files": [r.as_dict() for r in results],
        "collection": kb.collection(collection),
        "took_ms": round((time.perf_counter() - started) * 1000, 2),
    }


def _progress_lines(
    kb: KnowledgeBase,
    parser: FileParser,
    uploads: list[tuple[str | None, bytes]],
    collection: str | None,
    limits: UploadLimits,
    events: queue.Queue[dict[str, Any] | None],
) -> Iterator[str]:
    """Ingest in a thread and stream its progress as JSON lines; the last line is the result."""
    total = len(uploads)

    def work() -> None:
        try:
            body = _ingest_uploads(
                kb,
                parser,
                uploads,
                collection,
                limits,
                lambda e: events.put({**e, "files": total}),
            )
            events.put({"event": "done", **body})
        except ServiceError as exc:
            events.put({"event": "error", **exc.to_dict(get_request_id())})
        except Exception:
            log.exception("upload failed")
            events.put({"event": "error", **ServiceError().to_dict(get_request_id())})
        finally:
            events.put(None)

    # The ingest finishes even if the client goes away: its writes are atomic per file.
    threading.Thread(target=copy_context().run, args=(work,), daemon=True).start()
    while (event := events.get()) is not None:
        yield json.dumps(event) + "\n"


def create_app(
    config: RetrieverConfig | None = None,
    *,
    embedder: Embedder | None = None,
    store: VectorStore | None = None,
) -> Flask:
    """Build the retriever app; the model loads here, once, never at import time."""
    config = config or load_config()
    app, _ = create_service_app(__name__, "retriever", config, internal=True)
    app.extensions["retriever_config"] = config

    kb: KnowledgeBase | None = None
    load_error: str | None = None
    try:
        kb = build_knowledge_base(config, embedder=embedder, store=store)
        log.info("retriever ready to serve: %s, %s", kb.embedder.model_name, kb.store.description)
    except Exception as exc:  # a bad model name must not crash-loop the container
        load_error = f"{type(exc).__name__}: {exc}"
        log.exception("could not load the embedding model; /readyz will say why")
    app.extensions["knowledge_base"] = kb
    # Parser processes start on the first upload, not here: most replicas never parse a file.
    file_parser = FileParser(config.parse_limits, workers=config.parse_workers)
    app.extensions["file_parser"] = file_parser
    upload_limits = UploadLimits(config.max_documents_per_request, config.max_text_chars)
    if kb is not None and config.search_mode != "dense" and config.lexical_warm_up:
        # Load the default collection's lexical index now, not in the first search: a full
        # reconcile takes ~40 s at 100k chunks, and lexical searches wait for it.
        threading.Thread(
            target=_warm_lexical_index, args=(kb,), name="lexical-warm-up", daemon=True
        ).start()

    if kb is not None and config.startup_sweep:
        threading.Thread(
            target=_sweep_forever,
            args=(kb, config.sweep_interval_s),
            name="version-sweep",
            daemon=True,
        ).start()

    def knowledge_base() -> KnowledgeBase:
        if kb is None:
            raise NotReady(f"The embedding model is not loaded: {load_error}")
        return kb

    readiness = CachedReadiness(lambda: knowledge_base().check_ready(), config.readiness_interval_s)
    app.extensions["readiness"] = readiness

    @app.get("/readyz")
    def readyz() -> Any:
        timings = readiness.get()
        return jsonify(
            status="ready", model=kb.embedder.model_name, store=kb.store.description, **timings
        )

    @app.post("/v1/documents")
    def ingest_documents() -> Any:
        body = parse_body(IngestRequest)
        if len(body.documents) > config.max_documents_per_request:
            raise ValidationFailed(
                f"At most {config.max_documents_per_request} documents per request.",
                details=[{"field": "documents", "message": "too many documents"}],
            )
        too_long = [i for i, d in enumerate(body.documents) if len(d.text) > config.max_text_chars]
        if too_long:
            raise ValidationFailed(
                f"Document text is limited to {config.max_text_chars} characters.",
                details=[{"field": f"documents.{i}.text", "message": "too long"} for i in too_long],
            )
        started = time.perf_counter()
        outcomes = knowledge_base().ingest(
            [
                DocumentInput(
                    text=d.text,
                    id=d.id,
                    metadata=dict(d.metadata),
                    segments=tuple(
                        Segment(s.start, s.end, s.page, s.section) for s in d.segments or []
                    ),
                )
                for d in body.documents
            ],
            body.collection,
        )
        return jsonify(
            documents=len(outcomes),
            chunks=sum(o.chunks for o in outcomes),
            created=sum(o.status == "created" for o in outcomes),
            updated=sum(o.status == "updated" for o in outcomes),
            unchanged=sum(o.status == "unchanged" for o in outcomes),
            results=[{"id": o.id, "status": o.status, "chunks": o.chunks} for o in outcomes],
            collection=knowledge_base().collection(body.collection),
            took_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    @app.get("/v1/documents")
    def list_documents() -> Any:
        query = parse_query(DocumentListQuery)
        return jsonify(
            knowledge_base().list_documents(
                query.collection, limit=query.limit, offset=query.offset
            )
        )

    @app.post("/v1/files")
    def upload_files() -> Any:
        request.max_content_length = config.max_upload_bytes
        form = validate(UploadForm, request.form.to_dict(), "form")
        uploads = [(u.filename, u.read()) for u in request.files.getlist("file")]
        if not uploads:
            raise ValidationFailed(
                "Send one or more files as multipart/form-data parts named 'file'.",
                details=[{"field": "file", "message": "no file"}],
            )
        kb = knowledge_base()
        if request.accept_mimetypes.best == NDJSON:
            return Response(
                stream_with_context(
                    _progress_lines(
                        kb, file_parser, uploads, form.collection, upload_limits, queue.Queue()
                    )
                ),
                mimetype=NDJSON,
            )
        return jsonify(_ingest_uploads(kb, file_parser, uploads, form.collection, upload_limits))

    @app.get("/v1/documents/<path:document_id>")
    def get_document(document_id: str) -> Any:
        query = parse_query(CollectionQuery)
        return jsonify(knowledge_base().get_document(document_id, query.collection))

    @app.delete("/v1/documents/<path:document_id>")
    def delete_document(document_id: str) -> Any:
        query = parse_query(CollectionQuery)
        deleted = knowledge_base().delete_document(document_id, query.collection)
        return jsonify(deleted_chunks=deleted, id=document_id)

    @app.post("/v1/search")
    def search() -> Any:
        body = parse_body(SearchRequest)
        started = time.perf_counter()
        result = knowledge_base().search(
            body.query,
            top_k=body.top_k,
            min_score=body.min_score,
            where=body.where,
            collection=body.collection,
            mode=body.mode,
            fusion=body.fusion,
            dense_weight=body.dense_weight,
        )
        return jsonify(
            results=[
                {
                    "chunk_id": h.chunk_id,
                    "document_id": h.document_id,
                    "text": h.text,
                    "score": h.score,
                    "lexical_score": h.lexical_score,
                    "fused_score": h.fused_score,
                    "metadata": h.metadata,
                    "position": h.position,
                    "start": h.start,
                    "end": h.end,
                }
                for h in result.hits
            ],
            mode=result.mode,
            fusion=result.fusion,
            dense_weight=result.dense_weight,
            query_terms=None
            if result.query_terms is None
            else [
                {
                    "term": t.term,
                    "document_frequency": t.document_frequency,
                    "idf": t.idf,
                    "in_results": t.in_results,
                    "result_ranks": t.result_ranks,
                }
                for t in result.query_terms
            ],
            collection_chunks=result.collection_chunks,
            took_ms=round((time.perf_counter() - started) * 1000, 2),
            embed_ms=round(result.embed_ms, 2),
            query_ms=round(result.query_ms, 2),
            lexical_sync_ms=round(result.sync_ms, 2),
            lexical_ms=round(result.lexical_ms, 2),
        )

    @app.post("/v1/embed")
    def embed() -> Any:
        body = parse_body(EmbedRequest)
        if len(body.texts) > config.max_embed_texts:
            raise ValidationFailed(
                f"At most {config.max_embed_texts} texts per request.",
                details=[{"field": "texts", "message": "too many texts"}],
            )
        vectors = knowledge_base().embed(body.texts)
        return jsonify(
            embeddings=np.round(vectors, 7).tolist(),
            dimension=int(vectors.shape[1]),
            model=knowledge_base().embedder.model_name,
        )

    @app.get("/v1/stats")
    def stats() -> Any:
        query = parse_query(CollectionQuery)
        return jsonify(knowledge_base().stats(query.collection))

    @app.get("/v1/collections")
    def list_collections() -> Any:
        return jsonify(collections=knowledge_base().store.list_collections())

    openapi = openapi_document()

    @app.get("/openapi.json")
    def openapi_json() -> Any:
        return jsonify(openapi)

    @app.delete("/v1/collections/<name>")
    def delete_collection(name: str) -> Any:
        collection = validate(CollectionQuery, {"collection": name}, "path").collection
        knowledge_base().delete_collection(collection)
        return jsonify(deleted=collection)

    return app
