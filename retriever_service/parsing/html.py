"""HTML: the page's main text (no navigation, scripts or styles), headings kept as sections."""

from __future__ import annotations

from retriever_service.parsing.limits import ParseLimits
from retriever_service.parsing.model import FileRejected, ParsedDocument, SegmentBuilder

# Elements of trafilatura's XML output whose text is one block of the document.
_BLOCKS = frozenset({"p", "list", "quote", "code", "table"})


def parse_html(data: bytes, limits: ParseLimits) -> ParsedDocument:
    """Extract the main content with trafilatura; each heading starts a section."""
    import trafilatura
    from lxml import etree

    extracted = trafilatura.extract(
        data,
        output_format="xml",
        include_formatting=True,
        include_tables=True,
        include_comments=False,
        include_links=False,
        include_images=False,
        with_metadata=True,
        # Short pages (a help article, a product sheet) count: keep what the page holds.
        favor_recall=True,
    )
    if not extracted:
        raise FileRejected("no_text", "the web page has no main text")
    try:
        root = etree.fromstring(extracted.encode("utf-8"))
    except etree.XMLSyntaxError as exc:
        raise FileRejected("corrupt", "the web page could not be read") from exc
    main = root.find("main")
    if main is None:
        raise FileRejected("no_text", "the web page has no main text")
    builder = SegmentBuilder()
    section: str | None = None
    for element in main:
        text = _text(element)
        if element.tag == "head":
            section = " ".join(text.split()) or section
            builder.add(text, section=section)
        elif element.tag in _BLOCKS or text.strip():
            builder.add(text, section=section)
    if not builder.text.strip():
        raise FileRejected("no_text", "the web page has no main text")
    title = (root.get("title") or "").strip() or None
    return ParsedDocument(builder.text, tuple(builder.segments), title)


def _text(element: object) -> str:
    tag = getattr(element, "tag", "")
    if tag == "list":
        items = [item for item in element if getattr(item, "tag", "") == "item"]  # type: ignore[attr-defined]
        return "\n".join(f"- {_text(item)}" for item in items)
    if tag == "table":
        rows = []
        for row in element.iter("row"):  # type: ignore[attr-defined]
            cells = [" ".join("".join(c.itertext()).split()) for c in row if c.tag == "cell"]
            rows.append(" | ".join(c for c in cells if c))
        return "\n".join(r for r in rows if r)
    return " ".join("".join(element.itertext()).split())  # type: ignore[attr-defined]
