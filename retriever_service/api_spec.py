"""The retriever's OpenAPI operations: what each route takes and answers, for /openapi.json."""

from __future__ import annotations

from typing import Any

from qa_common.api_models import (
    DeleteResponse,
    DocumentList,
    Health,
    IngestResponse,
    UploadResponse,
)
from qa_common.openapi import (
    COLLECTION_PARAM,
    PAGE_PARAMS,
    Operation,
    build_openapi,
    upload_body,
)
from retriever_service.schemas import (
    CollectionDeleted,
    CollectionList,
    DocumentDetail,
    EmbedRequest,
    EmbedResponse,
    IngestRequest,
    SearchRequest,
    SearchResponse,
    StatsResponse,
)

API_VERSION = "1.0.0"
# Every route but the probes and metrics: a wrong key (401), too many in flight (429), the store
# down, slow or failing (503, 504, 502), a store written before document versions (503).
_COMMON = (401, 429, 502, 503, 504)
_JSON_BODY = (400, 413, 415, 422)
_DOCUMENT_ID = {
    "name": "document_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}

OPERATIONS = [
    Operation(
        "post",
        "/v1/documents",
        "Add or replace documents; each changes atomically (409 when a concurrent write won)",
        "documents",
        request=IngestRequest,
        response=IngestResponse,
        errors=(*_JSON_BODY, 404, 409, *_COMMON),
        auth=True,
    ),
    Operation(
        "get",
        "/v1/documents",
        "List a collection's documents, newest first, a page at a time",
        "documents",
        response=DocumentList,
        errors=(404, 409, 422, *_COMMON),
        auth=True,
        parameters=[COLLECTION_PARAM, *PAGE_PARAMS],
    ),
    Operation(
        "post",
        "/v1/files",
        "Parse and ingest uploaded files, each on its own",
        "documents",
        response=UploadResponse,
        errors=(404, 409, 413, 422, *_COMMON),
        auth=True,
        request_body=upload_body(),
    ),
    Operation(
        "get",
        "/v1/documents/{document_id}",
        "Read a document's current version",
        "documents",
        response=DocumentDetail,
        errors=(404, 409, 422, *_COMMON),
        auth=True,
        parameters=[_DOCUMENT_ID, COLLECTION_PARAM],
    ),
    Operation(
        "delete",
        "/v1/documents/{document_id}",
        "Delete a document (409 when a concurrent write won)",
        "documents",
        response=DeleteResponse,
        errors=(404, 409, 422, *_COMMON),
        auth=True,
        parameters=[_DOCUMENT_ID, COLLECTION_PARAM],
    ),
    Operation(
        "post",
        "/v1/search",
        "Return the chunks nearest a query (dense, lexical or hybrid)",
        "search",
        request=SearchRequest,
        response=SearchResponse,
        errors=(*_JSON_BODY, 404, 409, *_COMMON),
        auth=True,
    ),
    Operation(
        "post",
        "/v1/embed",
        "Embed texts with the retriever's model",
        "search",
        request=EmbedRequest,
        response=EmbedResponse,
        errors=(*_JSON_BODY, *_COMMON),
        auth=True,
    ),
    Operation(
        "get",
        "/v1/stats",
        "Count a collection's documents and chunks; the model and settings",
        "operations",
        response=StatsResponse,
        errors=(404, 409, 422, *_COMMON),
        auth=True,
        parameters=[COLLECTION_PARAM],
    ),
    Operation(
        "get",
        "/v1/collections",
        "List the collections",
        "operations",
        response=CollectionList,
        errors=_COMMON,
        auth=True,
    ),
    Operation(
        "delete",
        "/v1/collections/{name}",
        "Drop a collection and its documents",
        "operations",
        response=CollectionDeleted,
        errors=(404, 409, 422, *_COMMON),
        auth=True,
        parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
    ),
    Operation("get", "/healthz", "The process is alive", "operations", response=Health),
    Operation(
        "get",
        "/readyz",
        "The model and the store answer (503 with the reason)",
        "operations",
        response=Health,
        errors=(503,),
    ),
]


def openapi_document() -> dict[str, Any]:
    """Return the retriever's OpenAPI 3.1 description."""
    return build_openapi(OPERATIONS, title="grounded-qa retriever", version=API_VERSION)
