"""The gateway's Flask app factory and routes."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from flask import Flask, Response, jsonify, request, send_from_directory, stream_with_context
from prometheus_client import Counter

from gateway import openai_compat
from gateway.answering import Answerer, Turn
from gateway.clients import GeneratorClient, RetrieverClient, retriever_client
from gateway.config import GatewayConfig, load_config
from gateway.errors import AdminRoutesDisabled
from gateway.schemas import (
    AskRequest,
    AskResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ContextRequest,
    ContextResponse,
    DeleteResponse,
    DocumentList,
    DocumentsRequest,
    Health,
    IngestResponse,
    ModelList,
    UploadResponse,
)
from qa_common.errors import (
    BadGateway,
    Forbidden,
    NotReady,
    ServiceError,
    Unauthorized,
    ValidationFailed,
)
from qa_common.openapi import (
    COLLECTION_PARAM,
    PAGE_PARAMS,
    Operation,
    build_openapi,
    upload_body,
)
from qa_common.request_context import get_request_id, set_request_id
from qa_common.retriever_client import document_path
from qa_common.web import create_service_app, parse_body, sse_event, sse_response

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The pages load only their own scripts, styles and API: no inline script, no framing.
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
# Swagger UI sets style attributes from its script; its scripts are still our files only.
_DOCS_POLICY = _PAGE_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
NDJSON = "application/x-ndjson"
API_VERSION = "1.0.0"
# One server-sent event as clients parse it: its name and its JSON data line.
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
}
OPERATIONS = [
    Operation(
        "post",
        "/v1/ask",
        "Answer a question from the documents",
        "answers",
        request=AskRequest,
        response=AskResponse,
        errors=(400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504),
        auth=True,
        extra_responses={
            "200": {
                "description": "The answer; with `stream: true`, server-sent events: `sources`, "
                "`token`… and a final `done` carrying the same object as the JSON answer.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/AskResponse"}},
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            }
        },
    ),
    Operation(
        "post",
        "/v1/context",
        "Retrieve as /v1/ask would, and return what the generator would be sent (no answer)",
        "answers",
        request=ContextRequest,
        response=ContextResponse,
        errors=(400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504),
        auth=True,
    ),
    Operation(
        "get",
        "/v1/models",
        "List the model name OpenAI clients ask for (grounded-qa)",
        "answers",
        response=ModelList,
        errors=(401, 403),
        auth=True,
    ),
    Operation(
        "post",
        "/v1/chat/completions",
        "Answer the last user message from the documents, in the OpenAI Chat Completions shape",
        "answers",
        request=ChatCompletionRequest,
        response=ChatCompletionResponse,
        errors=(400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504),
        auth=True,
        extra_responses={
            "200": {
                "description": "A `chat.completion` whose message is the answer, with `mode`, "
                "`sources`, `grounding`… as extra fields; with `stream: true`, "
                "`chat.completion.chunk` data lines (the checked answer in one content delta, "
                "the extra fields on the chunk with the `finish_reason`) and `data: [DONE]`.",
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ChatCompletionResponse"}
                    },
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            }
        },
    ),
    Operation(
        "post",
        "/v1/documents",
        "Add or replace documents (admin key)",
        "documents",
        request=DocumentsRequest,
        response=IngestResponse,
        errors=(400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504),
        auth=True,
    ),
    Operation(
        "get",
        "/v1/documents",
        "List the documents of a collection, a page at a time (admin key)",
        "documents",
        response=DocumentList,
        errors=(401, 403, 404, 409, 422, 429, 502, 503, 504),
        auth=True,
        parameters=[COLLECTION_PARAM, *PAGE_PARAMS],
    ),
    Operation(
        "post",
        "/v1/files",
        "Upload files (PDF, Word, HTML, text, Markdown, CSV, JSON, JSONL) to ingest (admin key)",
        "documents",
        response=UploadResponse,
        errors=(401, 403, 404, 409, 413, 422, 429, 502, 503, 504),
        auth=True,
        extra_responses={
            "200": {
                "description": "One result per file. With `Accept: application/x-ndjson`, "
                "JSON lines as the work goes: `file` (index), `parsing`, `embedding` (`done` "
                "of `total` chunks), `file_done` (that file's result), then `done` carrying "
                "the same object as the JSON answer, or `error` with the error envelope.",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/UploadResponse"}},
                    "application/x-ndjson": {"schema": {"type": "string"}},
                },
            }
        },
        request_body=upload_body(
            "One part per file; its file name is the document id (uploading it again replaces it)."
        ),
    ),
    Operation(
        "delete",
        "/v1/documents/{document_id}",
        "Delete a document (admin key)",
        "documents",
        response=DeleteResponse,
        errors=(401, 403, 404, 409, 422, 429, 502, 503, 504),
        auth=True,
        parameters=[
            {"name": "document_id", "in": "path", "required": True, "schema": {"type": "string"}},
            COLLECTION_PARAM,
        ],
    ),
    Operation("get", "/healthz", "The process is alive", "operations", response=Health),
    Operation(
        "get", "/readyz", "The retriever answers", "operations", response=Health, errors=(503,)
    ),
]


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _check_key(allowed: list[str]) -> None:
    """Require a bearer token equal to one of the allowed keys, compared in constant time."""
    token = _bearer_token()
    if token is None:
        raise Unauthorized(
            "Send the key as 'Authorization: Bearer <key>'.",
            headers={"WWW-Authenticate": 'Bearer realm="grounded-qa"'},
        )
    matched = False
    for key in allowed:  # no early exit: the time taken must not tell which key nearly matched
        matched |= hmac.compare_digest(token.encode(), key.encode())
    if not matched:
        raise Forbidden("This key is not allowed here.")


def create_app(
    config: GatewayConfig | None = None,
    *,
    retriever: RetrieverClient | None = None,
    generator: GeneratorClient | None = None,
) -> Flask:
    """Build the gateway app; it holds one pooled client per downstream service."""
    config = config or load_config()
    app, http_metrics = create_service_app(__name__, "gateway", config, static_folder=None)
    retriever = retriever or retriever_client(config)
    generator = generator or GeneratorClient(config)
    answerer = Answerer(retriever, generator, config)
    answers = Counter(
        "gateway_answers_total",
        "Answers given, by mode, and why the generator's text was not used (none: it was).",
        ["mode", "degraded"],
        registry=http_metrics.registry,
    )
    answerer.on_answer = lambda a: answers.labels(a.mode, ",".join(a.degraded) or "none").inc()
    app.extensions["answerer"] = answerer
    admin_key = config.admin_api_key.get_secret_value() if config.admin_api_key else None
    ask_keys = config.ask_keys
    openapi_document = build_openapi(OPERATIONS, title="grounded-qa gateway", version=API_VERSION)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if response.mimetype == "text/html":
            docs = request.path.startswith("/docs")
            response.headers["Content-Security-Policy"] = _DOCS_POLICY if docs else _PAGE_POLICY
            response.headers["X-Frame-Options"] = "DENY"
            response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def require_admin() -> None:
        if admin_key is None:
            raise AdminRoutesDisabled()
        _check_key([admin_key])

    @app.get("/readyz")
    def readyz() -> Any:
        try:
            retriever.ready()
        except ServiceError as exc:
            raise NotReady(f"The retriever is not ready: {exc.message}") from exc
        model: dict[str, Any] = {}
        try:
            generator_ready = generator.ready()
            generator_state = "ready"
            # Which model writes the answers, and why when it is a fallback (the chat page says).
            model = {
                key: generator_ready[key]
                for key in ("model", "model_origin", "fallback_reason")
                if generator_ready.get(key)
            }
        except ServiceError as exc:
            # Without the generator, answers are extractive: degraded, still ready.
            generator_state = f"unavailable: {exc.message}"
        return jsonify(
            status="ready",
            retriever="ready",
            generator=generator_state,
            **{f"generator_{key}": value for key, value in model.items()},
        )

    def require_ask_key() -> None:
        if ask_keys:
            _check_key([*ask_keys, *([admin_key] if admin_key else [])])

    @app.post("/v1/ask")
    def ask() -> Any:
        require_ask_key()
        body = parse_body(AskRequest)
        history = [Turn(t.role, t.text) for t in body.history]
        if not body.stream:
            answer = answerer.answer(
                body.question, history=history, top_k=body.top_k, collection=body.collection
            )
            return jsonify(answer.to_dict(get_request_id()))
        _, events = answerer.answer_stream(
            body.question, history=history, top_k=body.top_k, collection=body.collection
        )
        request_id = get_request_id()

        def stream() -> Iterator[str]:
            set_request_id(request_id)
            try:
                for event, data in events:
                    yield sse_event(event, data)
            except ServiceError as exc:
                yield sse_event("error", exc.to_dict(request_id))
            except Exception:
                log.exception("answer stream failed")
                yield sse_event("error", ServiceError().to_dict(request_id))

        return sse_response(stream())

    @app.post("/v1/context")
    def context() -> Any:
        require_ask_key()
        body = parse_body(ContextRequest)
        history = [Turn(t.role, t.text) for t in body.history]
        found = answerer.context(
            body.question, history=history, top_k=body.top_k, collection=body.collection
        )
        return jsonify({**found, "request_id": get_request_id()})

    @app.get("/v1/models")
    def list_models() -> Any:
        require_ask_key()
        return jsonify(openai_compat.models())

    @app.post("/v1/chat/completions")
    def chat_completions() -> Any:
        require_ask_key()
        body = parse_body(ChatCompletionRequest)
        question, history = openai_compat.conversation(body)
        request_id = get_request_id()
        if not body.stream:
            answer = answerer.answer(
                question, history=history, top_k=body.top_k, collection=body.collection
            )
            return jsonify(openai_compat.completion(answer.to_dict(request_id), model=body.model))
        # Retrieval runs before the stream starts: its errors are ordinary error responses.
        _, events = answerer.answer_stream(
            question, history=history, top_k=body.top_k, collection=body.collection
        )

        def stream() -> Iterator[str]:
            set_request_id(request_id)
            yield from openai_compat.completion_chunks(
                events, model=body.model, include_usage=body.include_usage, request_id=request_id
            )

        return sse_response(stream())

    @app.post("/v1/documents")
    def add_documents() -> Any:
        require_admin()
        body = parse_body(DocumentsRequest)
        payload = body.model_dump(exclude_none=True)
        # Up to MAX_DOCUMENTS_PER_REQUEST documents to chunk and embed: an upload's time, not
        # a search's.
        return jsonify(
            retriever.request_json(
                "POST", "/v1/documents", json=payload, read_timeout_s=config.upload_timeout_s
            )
        )

    @app.get("/v1/documents")
    def list_documents() -> Any:
        require_admin()
        names = ("collection", "limit", "offset")
        params = {k: request.args[k] for k in names if k in request.args}
        return jsonify(retriever.request_json("GET", "/v1/documents", params=params))

    @app.post("/v1/files")
    def upload_files() -> Any:
        require_admin()
        request.max_content_length = config.max_upload_bytes
        uploads = request.files.getlist("file")
        if not uploads:
            raise ValidationFailed(
                "Send one or more files as multipart/form-data parts named 'file'.",
                details=[{"field": "file", "message": "no file"}],
            )
        # Read into memory (bounded by MAX_UPLOAD_BYTES): a request that fails over to another
        # replica must send the same bytes again.
        files = [
            ("file", (upload.filename or "", upload.read(), "application/octet-stream"))
            for upload in uploads
        ]
        form = {"collection": request.form["collection"]} if "collection" in request.form else {}
        if request.accept_mimetypes.best == NDJSON:
            # Progress lines (parsing, embedding…) as the retriever writes them; the last is
            # the result, or an error.
            upstream = retriever.request(
                "POST",
                "/v1/files",
                files=files,
                data=form,
                read_timeout_s=config.upload_timeout_s,
                stream=True,
                accept=NDJSON,
            )

            def relay() -> Iterator[bytes]:
                try:
                    for line in upstream.iter_lines():
                        if line:
                            yield line + b"\n"
                except requests.RequestException:
                    # The retriever went away mid-upload: say so as the stream's last line.
                    lost = BadGateway(
                        "The retriever stopped answering during the upload; files reported "
                        "done are stored, the others may not be.",
                        dependency="retriever",
                    )
                    yield (
                        json.dumps({"event": "error", **lost.to_dict(get_request_id())}) + "\n"
                    ).encode()

            response = Response(stream_with_context(relay()), mimetype=NDJSON)
            response.call_on_close(upstream.close)
            return response
        return jsonify(
            retriever.request_json(
                "POST",
                "/v1/files",
                files=files,
                data=form,
                read_timeout_s=config.upload_timeout_s,
            )
        )

    @app.delete("/v1/documents/<path:document_id>")
    def delete_document(document_id: str) -> Any:
        require_admin()
        params = (
            {"collection": request.args["collection"]} if "collection" in request.args else None
        )
        # A document of many chunks takes a while to remove; like an upload, it is a write.
        return jsonify(
            retriever.request_json(
                "DELETE",
                document_path(document_id),
                params=params,
                read_timeout_s=config.upload_timeout_s,
            )
        )

    @app.get("/openapi.json")
    def openapi() -> Any:
        return jsonify(openapi_document)

    @app.get("/docs")
    @app.get("/docs/")
    def docs() -> Any:
        return send_from_directory(STATIC_DIR, "docs.html")

    @app.get("/docs/assets/<path:filename>")
    def docs_assets(filename: str) -> Any:
        import swagger_ui_bundle

        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)

    @app.get("/")
    def chat_page() -> Any:
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/static/<path:filename>")
    def static_files(filename: str) -> Any:
        return send_from_directory(STATIC_DIR, filename)

    return app
