"""PDF: the text layer of each page, with the page number and the outline's heading."""

from __future__ import annotations

import io
import logging
from typing import Any

from retriever_service.parsing.limits import ParseLimits
from retriever_service.parsing.model import FileRejected, ParsedDocument, SegmentBuilder

log = logging.getLogger(__name__)
# Fewer letters than this in the whole file: it is a scan, or pictures of text.
_MIN_TEXT_CHARS = 20


def parse_pdf(data: bytes, limits: ParseLimits) -> ParsedDocument:
    """Read a PDF's text layer page by page; refuse encrypted, scanned or broken files."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError, PdfStreamError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _opens_without_password(reader):
            raise FileRejected("encrypted", "the PDF is encrypted and needs a password")
        page_count = len(reader.pages)
    except (PdfReadError, PdfStreamError, ValueError, KeyError, TypeError) as exc:
        raise FileRejected("corrupt", f"not a readable PDF ({_short(exc)})") from exc
    except DependencyError as exc:
        raise FileRejected("encrypted", "the PDF is encrypted with an unsupported cipher") from exc
    if page_count > limits.max_pages:
        raise FileRejected(
            "too_many_pages",
            f"the PDF has {page_count:,} pages, over the limit of {limits.max_pages:,} "
            "(MAX_PDF_PAGES)",
        )
    sections = _outline_sections(reader)
    builder = SegmentBuilder()
    section: str | None = None
    for number in range(1, page_count + 1):
        section = sections.get(number, section)
        try:
            text = reader.pages[number - 1].extract_text() or ""
        except Exception as exc:
            raise FileRejected("corrupt", f"page {number} cannot be read ({_short(exc)})") from exc
        builder.add(_clean(text), page=number, section=section)
    if sum(ch.isalnum() for ch in builder.text) < _MIN_TEXT_CHARS:
        raise FileRejected(
            "no_text",
            "the PDF has no text layer (a scan or images of text?); OCR is not supported",
        )
    title = _metadata_title(reader)
    return ParsedDocument(builder.text, tuple(builder.segments), title, pages=page_count)


def _opens_without_password(reader: Any) -> bool:
    # Many PDFs are encrypted only to set permissions, with an empty password to open them.
    from pypdf import PasswordType

    return reader.decrypt("") != PasswordType.NOT_DECRYPTED


def _outline_sections(reader: Any) -> dict[int, str]:
    """Return page number → the last outline (bookmark) title that starts on it."""
    found: dict[int, str] = {}

    def walk(items: Any) -> None:
        for item in items:
            if isinstance(item, list):
                walk(item)
                continue
            try:
                page = reader.get_destination_page_number(item) + 1
            except Exception:  # noqa: S112 - a broken bookmark is only a missing title
                continue
            title = str(getattr(item, "title", "") or "").strip()
            if title and page >= 1:
                found[page] = title

    try:
        walk(reader.outline)
    except Exception:
        log.debug("PDF outline unreadable", exc_info=True)
    return found


def _metadata_title(reader: Any) -> str | None:
    try:
        title = reader.metadata.title if reader.metadata else None
    except Exception:
        return None
    return str(title).strip() or None if title else None


def _clean(text: str) -> str:
    # pypdf leaves trailing spaces on lines, and some generators leave NULs in the text.
    lines = [line.rstrip() for line in text.replace("\x00", "").splitlines()]
    return "\n".join(lines).strip()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."
