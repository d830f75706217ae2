"""Response bodies that the retriever answers and the gateway passes on: one definition each.

They document both services' OpenAPI descriptions, and the API tests check answers against them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class DocumentResult(BaseModel):
    id: str
    status: Literal["created", "updated", "unchanged"]
    chunks: int


class IngestResponse(BaseModel):
    """What a request of documents did: counts, and each document's outcome."""

    documents: int
    chunks: int
    created: int
    updated: int
    unchanged: int
    results: list[DocumentResult]
    collection: str
    took_ms: float


class DeleteResponse(BaseModel):
    deleted_chunks: int
    id: str


class FileError(BaseModel):
    code: str = Field(
        description="unsupported_type, no_text, encrypted, corrupt, too_many_pages, too_large, "
        "too_many_documents, parse_timeout, parse_failed, bad_encoding, bad_name, unreadable, "
        "invalid, or a validation code"
    )
    message: str


class FileProblem(BaseModel):
    source: str
    message: str


class FileResult(BaseModel):
    """What became of one uploaded file."""

    file: str
    status: Literal["created", "updated", "unchanged", "error"]
    chunks: int
    documents: list[DocumentResult]
    error: FileError | None = None
    problems: list[FileProblem] | None = Field(
        None, description="Records of a CSV/JSON/JSONL file that could not be read; the rest are"
    )


class UploadResponse(BaseModel):
    """One result per file, in the order sent; a bad file never stops the others.

    A file uploaded again replaces what it held: its records edited or removed since are
    deleted.
    """

    files: list[FileResult]
    collection: str
    took_ms: float


class DocumentSummary(BaseModel):
    id: str
    title: str | None
    source: str | None
    type: str | None = Field(description="pdf, docx, html, markdown, text; none for records")
    chunks: int
    ingested_at: str | None = Field(description="UTC, ISO 8601, of the version stored now")
    metadata: dict[str, Any]


class DocumentList(BaseModel):
    """A page of a collection's documents, newest first."""

    collection: str
    documents: list[DocumentSummary]
    total: int
    offset: int
    limit: int
    next_offset: int | None


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None
    details: Any = None


class ErrorEnvelope(BaseModel):
    """Every error: a code to branch on, a message to show, the request id to report."""

    error: ErrorBody


class Health(BaseModel):
    status: str
    model_config = ConfigDict(extra="allow")
