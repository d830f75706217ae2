"""Ingest whole files: parse each, store its documents, and say per file what happened."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from qa_common.errors import ServiceError
from retriever_service.knowledge_base import DocumentInput, IngestOutcome, KnowledgeBase
from retriever_service.loaders import LoadedDocument, LoadProblem, Parser, load_bytes
from retriever_service.schemas import DocumentId

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOCUMENT_ID: TypeAdapter[str] = TypeAdapter(DocumentId)


@dataclass
class FileResult:
    """What became of one file: its documents' outcomes, or why it was refused."""

    file: str
    status: str = "error"
    documents: list[IngestOutcome] = field(default_factory=list)
    error: dict[str, str] | None = None
    problems: list[LoadProblem] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "file": self.file,
            "status": self.status,
            "chunks": sum(o.chunks for o in self.documents),
            "documents": [
                {"id": o.id, "status": o.status, "chunks": o.chunks} for o in self.documents
            ],
        }
        if self.error:
            body["error"] = self.error
        if self.problems:
            body["problems"] = [{"source": p.source, "message": p.message} for p in self.problems]
        return body


def upload_name(raw: str | None) -> str | None:
    """Return the file name an upload is known by (its last path part), or None if unusable."""
    name = re.split(r"[\\/]", raw or "")[-1].strip()
    if not name or name.startswith(".") or _CONTROL.search(name) or len(name) > 255:
        return None
    return name


@dataclass(frozen=True)
class UploadLimits:
    """What one uploaded file may hold: the same bounds as a JSON ingest request."""

    max_documents: int = 1000
    max_text_chars: int = 2_000_000


def ingest_file(
    kb: KnowledgeBase,
    parser: Parser,
    name: str,
    data: bytes,
    collection: str | None,
    *,
    limits: UploadLimits | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> FileResult:
    """Parse one file and store its documents in one write: all of the file, or none of it.

    A file uploaded again replaces what it held: documents it no longer holds (records edited
    or removed since) are deleted after the write.
    """
    limits = limits or UploadLimits()
    result = FileResult(name)
    tell = on_event or (lambda _event: None)
    tell({"event": "parsing", "file": name})
    documents: list[LoadedDocument] = []
    for item in load_bytes(name, data, parser):
        if isinstance(item, LoadProblem):
            result.problems.append(item)
            continue
        problem = _check(item, limits)
        if problem:
            result.problems.append(LoadProblem(item.id, problem, "invalid", file=name))
        else:
            documents.append(item)
    if len(documents) > limits.max_documents:
        result.error = {
            "code": "too_many_documents",
            "message": f"the file holds {len(documents):,} documents; at most "
            f"{limits.max_documents:,} per file (MAX_DOCUMENTS_PER_REQUEST)",
        }
        return result
    if not documents:
        first = result.problems[0] if result.problems else LoadProblem(name, "no documents")
        result.error = {"code": first.code, "message": first.message}
        if len(result.problems) == 1:
            result.problems = []
        return result
    tell({"event": "embedding", "file": name, "done": 0, "total": None})
    try:
        result.documents = kb.ingest(
            [DocumentInput(d.text, d.id, dict(d.metadata), d.segments) for d in documents],
            collection,
            progress=lambda done, total: tell(
                {"event": "embedding", "file": name, "done": done, "total": total}
            ),
        )
        kb.delete_documents_of_source(name, {d.id for d in documents}, collection)
    except ServiceError as exc:
        # A refused file stores nothing; after a write conflict (another request wrote the same
        # documents at once) those of its records that won are stored, and the upload can be
        # sent again. The other files go on either way.
        if exc.status >= 500 or exc.status == 404:
            raise
        result.error = {"code": exc.code, "message": exc.message}
        return result
    result.status = _file_status(result.documents)
    return result


def _check(document: LoadedDocument, limits: UploadLimits) -> str | None:
    """Return why a parsed document breaks the ingest rules, or None."""
    if len(document.text) > limits.max_text_chars:
        return f"text is {len(document.text):,} characters; at most {limits.max_text_chars:,}"
    try:
        # The id rules of a JSON ingest request, from the same type.
        _DOCUMENT_ID.validate_python(document.id)
    except ValidationError:
        return "id is longer than 512 characters or holds control characters"
    return None


def _file_status(outcomes: Sequence[IngestOutcome]) -> str:
    statuses = {o.status for o in outcomes}
    if statuses == {"unchanged"}:
        return "unchanged"
    if statuses == {"created"}:
        return "created"
    return "updated"
