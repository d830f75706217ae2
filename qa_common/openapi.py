"""The OpenAPI document, generated from the pydantic models that validate requests."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from qa_common.api_models import ErrorEnvelope

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    """One documented route."""

    method: str
    path: str
    summary: str
    tag: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_media: str = "application/json"
    errors: tuple[int, ...] = ()
    auth: bool = False
    parameters: list[dict[str, Any]] = field(default_factory=list)
    extra_responses: dict[str, Any] = field(default_factory=dict)
    # A request body that is not a JSON model (a multipart upload), as written.
    request_body: dict[str, Any] | None = None


_STATUS_TEXT = {
    400: "Malformed JSON",
    401: "Missing API key",
    403: "Wrong API key",
    404: "Unknown id, or route disabled",
    413: "Body too large",
    415: "Body is not JSON",
    409: "Conflict: a concurrent write of the same document won, or another embedding model",
    422: "Invalid field (the details name it)",
    429: "Too many requests in flight (see Retry-After)",
    502: "A downstream service failed",
    503: "A downstream service is unreachable",
    504: "A downstream service is too slow",
}


# Parameters and bodies that the gateway and the retriever describe alike.
COLLECTION_PARAM = {
    "name": "collection",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
}
PAGE_PARAMS = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
    },
    {
        "name": "offset",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "default": 0},
    },
]


def upload_body(file_description: str | None = None) -> dict[str, Any]:
    """Describe a multipart upload: one ``file`` part per file, and an optional collection."""
    files: dict[str, Any] = {"type": "array", "items": {"type": "string", "format": "binary"}}
    if file_description:
        files["description"] = file_description
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": files, "collection": {"type": "string"}},
                }
            }
        },
    }


def _operation_id(op: Operation) -> str:
    words = [w.strip("{}") for w in op.path.strip("/").split("/") if w]
    return "_".join([op.method, *words]) if words else f"{op.method}_root"


def _ref(model: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=model)}


def build_openapi(operations: list[Operation], *, title: str, version: str) -> dict[str, Any]:
    """Assemble the OpenAPI 3.1 document for the given operations."""
    models: list[type[BaseModel]] = [ErrorEnvelope]
    for op in operations:
        models += [m for m in (op.request, op.response) if m is not None]
    unique = list(dict.fromkeys(models))
    _, schema = models_json_schema([(m, "validation") for m in unique], ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        item: dict[str, Any] = {
            "summary": op.summary,
            "tags": [op.tag],
            "operationId": _operation_id(op),
            "responses": {},
        }
        if op.parameters:
            item["parameters"] = op.parameters
        if op.request_body is not None:
            item["requestBody"] = op.request_body
        elif op.request is not None:
            item["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.request.__name__)}},
            }
        ok: dict[str, Any] = {"description": "OK"}
        if op.response is not None:
            ok["content"] = {op.response_media: {"schema": _ref(op.response.__name__)}}
        item["responses"]["200"] = ok
        item["responses"].update(op.extra_responses)
        for status in op.errors:
            item["responses"][str(status)] = {
                "description": _STATUS_TEXT.get(status, "Error"),
                "content": {"application/json": {"schema": _ref("ErrorEnvelope")}},
            }
        if op.auth:
            item["security"] = [{"bearer": []}]
        paths.setdefault(op.path, {})[op.method] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schema.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
