"""Word .docx: paragraphs and tables in reading order, headings kept as section titles."""

from __future__ import annotations

import io
from typing import Any

from retriever_service.parsing.limits import ParseLimits, check_zip
from retriever_service.parsing.model import FileRejected, ParsedDocument, SegmentBuilder


def parse_docx(data: bytes, limits: ParseLimits) -> ParsedDocument:
    """Read a .docx body; each heading starts a section that its following text falls under."""
    check_zip(data, limits, "Word")
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError) as exc:
        raise FileRejected("corrupt", "not a readable Word (.docx) file") from exc
    except Exception as exc:
        raise FileRejected("corrupt", f"not a readable Word (.docx) file ({exc})") from exc
    builder = SegmentBuilder()
    section: str | None = None
    title: str | None = None
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            builder.add(_table_text(block), section=section)
            continue
        text = block.text.strip()
        style = _style_name(block)
        if style == "title" and text:
            title = title or text
            section = text
        elif style.startswith("heading") and text:
            section = text
        # A heading is also text: "Wiring" is what a user may search for.
        builder.add(text, section=section)
    if not builder.text.strip():
        raise FileRejected("no_text", "the Word file has no text")
    core_title = (document.core_properties.title or "").strip() or None
    return ParsedDocument(builder.text, tuple(builder.segments), core_title or title)


def _style_name(paragraph: Any) -> str:
    try:
        return (paragraph.style.name or "").strip().lower() if paragraph.style else ""
    except (KeyError, AttributeError):
        return ""


def _table_text(table: Any) -> str:
    rows = []
    for row in table.rows:
        cells = []
        for cell in row.cells:
            text = " ".join(cell.text.split())
            # Merged cells repeat across the row; keep one.
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)
