"""Plain text and Markdown: Markdown headings become section titles."""

from __future__ import annotations

import bisect
import itertools
import re

from retriever_service.parsing.model import FileRejected, ParsedDocument, Segment

# No backtracking: the rest of the line is taken whole and its closing #s stripped in Python.
_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+([^\n]*)", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)


def decode_text(data: bytes) -> str:
    """Decode UTF-8 (a byte-order mark allowed); refuse anything else with a clear reason."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FileRejected(
            "bad_encoding", f"the file is not UTF-8 text (byte {exc.start} is not valid UTF-8)"
        ) from exc


def parse_text(data: bytes) -> ParsedDocument:
    """Read a plain text file as one span."""
    text = decode_text(data)
    if not text.strip():
        raise FileRejected("no_text", "the file is empty")
    # One span is no span: the whole text is chunked as it always was.
    return ParsedDocument(text)


def parse_markdown(data: bytes) -> ParsedDocument:
    """Read Markdown as it is written, one span per heading; the first '# ' line is the title."""
    text = decode_text(data)
    if not text.strip():
        raise FileRejected("no_text", "the file is empty")
    # Fence lines found once; a heading inside an odd number of them is code, not a heading.
    fences = [m.start() for m in _FENCE.finditer(text)]
    headings = [
        m
        for m in _ATX_HEADING.finditer(text)
        if bisect.bisect_left(fences, m.start()) % 2 == 0 and _heading_text(m)
    ]
    first = headings[0] if headings and not text[: headings[0].start()].strip() else None
    title = _heading_text(first) if first is not None and first.group(1) == "#" else None
    if not headings:
        return ParsedDocument(text, (), title)
    # Spans over the text as written (no rewriting), so that chunk offsets point into the file.
    segments = []
    bounds = [0, *(m.start() for m in headings), len(text)]
    sections: list[str | None] = [None, *(_heading_text(m) for m in headings)]
    for (start, end), section in zip(itertools.pairwise(bounds), sections, strict=False):
        if text[start:end].strip():
            segments.append(Segment(start, end, None, section))
    return ParsedDocument(text, tuple(segments), title)


def _heading_text(match: re.Match[str]) -> str:
    return match.group(2).strip().rstrip("#").strip()
