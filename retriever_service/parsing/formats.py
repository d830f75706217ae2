"""Which file types are read, and which parser reads each."""

from __future__ import annotations

from pathlib import PurePath

from retriever_service.parsing.limits import ParseLimits
from retriever_service.parsing.model import FileRejected, ParsedDocument

# One file, one document, read by a parser.
DOCUMENT_TYPES = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".pdf": "pdf",
    ".docx": "docx",
    ".html": "html",
    ".htm": "html",
}
# One file, many documents: a record per row or line.
RECORD_TYPES = {".csv": "csv", ".json": "json", ".jsonl": "jsonl"}
# Parsed in a child process with a time and memory limit: complex formats from anyone.
SANDBOXED_TYPES = frozenset({"pdf", "docx", "html"})
SUPPORTED_SUFFIXES = frozenset(DOCUMENT_TYPES) | frozenset(RECORD_TYPES)


def file_type(name: str) -> str | None:
    """Return the type a file name says it is, or None when it is not read."""
    suffix = PurePath(name).suffix.lower()
    return DOCUMENT_TYPES.get(suffix) or RECORD_TYPES.get(suffix)


def unsupported(name: str) -> FileRejected:
    """Return the refusal of a file whose type is not read."""
    suffix = PurePath(name).suffix.lower() or "(none)"
    kinds = ", ".join(sorted(SUPPORTED_SUFFIXES))
    return FileRejected("unsupported_type", f"file type {suffix} is not supported ({kinds})")


def parse_document(kind: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    """Parse one single-document file of a known type, in this process."""
    if kind == "pdf":
        from retriever_service.parsing.pdf import parse_pdf

        return parse_pdf(data, limits)
    if kind == "docx":
        from retriever_service.parsing.docx import parse_docx

        return parse_docx(data, limits)
    if kind == "html":
        from retriever_service.parsing.html import parse_html

        return parse_html(data, limits)
    from retriever_service.parsing.text import parse_markdown, parse_text

    if kind == "markdown":
        return parse_markdown(data)
    if kind == "text":
        return parse_text(data)
    raise ValueError(f"not a single-document type: {kind}")
