"""File parsers on real files built here: pages, headings, main text, and every refusal."""

from __future__ import annotations

import time

import pytest

from retriever_service.loaders import InProcessParser, LoadedDocument, LoadProblem, load_bytes
from retriever_service.parsing.formats import file_type
from retriever_service.parsing.limits import ParseLimits
from retriever_service.parsing.model import FileRejected
from retriever_service.parsing.sandbox import FileParser
from tests.retriever_service.sample_files import (
    HTML_PAGE,
    docx_bytes,
    image_only_pdf,
    pdf_bytes,
    zip_bomb,
)

MANUAL_PAGES = [
    "Halo thermostat manual. This manual explains installation and everyday use.",
    "Wiring. The C terminal carries the 24 volt common wire. Never connect mains power.",
    "Troubleshooting. Code E7 on the display means the room sensor lost its radio link.",
]


def parse(name: str, data: bytes, **limits: object) -> LoadedDocument:
    [item] = list(load_bytes(name, data, InProcessParser(ParseLimits(**limits))))  # type: ignore[arg-type]
    assert isinstance(item, LoadedDocument), item
    return item


def refusal(name: str, data: bytes, parser: object | None = None, **limits: object) -> LoadProblem:
    parser = parser or InProcessParser(ParseLimits(**limits))  # type: ignore[arg-type]
    [item] = list(load_bytes(name, data, parser))  # type: ignore[arg-type]
    assert isinstance(item, LoadProblem), item
    return item


def span_text(doc: LoadedDocument, page: int) -> str:
    return " ".join(doc.text[s.start : s.end] for s in doc.segments if s.page == page)


def test_pdf_text_is_read_page_by_page_with_bookmarks_as_sections() -> None:
    data = pdf_bytes(MANUAL_PAGES, bookmarks={1: "Introduction", 2: "Wiring"}, title="Halo manual")
    doc = parse("manual.pdf", data)
    assert doc.id == "manual.pdf"
    assert doc.metadata == {
        "source": "manual.pdf",
        "title": "Halo manual",
        "type": "pdf",
        "pages": 3,
    }
    assert [s.page for s in doc.segments] == [1, 2, 3]
    assert "24 volt common wire" in span_text(doc, 2)
    assert "24 volt" not in span_text(doc, 1) + span_text(doc, 3)
    # Page 3 has no bookmark of its own: it falls under the last one before it.
    assert [s.section for s in doc.segments] == ["Introduction", "Wiring", "Wiring"]


def test_pdf_without_text_layer_is_refused_with_its_reason() -> None:
    problem = refusal("scan.pdf", image_only_pdf())
    assert problem.code == "no_text"
    assert "no text layer" in problem.message
    assert "OCR" in problem.message


def test_encrypted_pdf_is_refused_but_one_with_an_empty_password_opens() -> None:
    problem = refusal("secret.pdf", pdf_bytes(MANUAL_PAGES, user_password="hunter2"))
    assert problem.code == "encrypted"
    assert "password" in problem.message
    # Encrypted only to set permissions: viewers open it without asking, so do we.
    doc = parse("permissions.pdf", pdf_bytes(MANUAL_PAGES, user_password=""))
    assert "Code E7" in doc.text


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\ngarbage"),
        ("truncated.pdf", pdf_bytes(MANUAL_PAGES)[:200]),
        ("notes.docx", b"this is not a zip archive"),
    ],
)
def test_corrupt_files_are_refused_with_a_reason(name: str, data: bytes) -> None:
    problem = refusal(name, data)
    assert problem.code in {"corrupt", "no_text"}, problem
    assert problem.message


def test_pdf_over_the_page_cap_is_refused() -> None:
    problem = refusal("long.pdf", pdf_bytes(MANUAL_PAGES), max_pages=2)
    assert problem.code == "too_many_pages"
    assert "3 pages" in problem.message
    assert "MAX_PDF_PAGES" in problem.message


def test_docx_headings_become_sections_and_tables_are_kept() -> None:
    data = docx_bytes(
        [
            ("Title", "Halo installer guide"),
            ("Normal", "This guide is for certified installers."),
            ("Heading 1", "Wiring"),
            ("Normal", "Connect the blue common wire to the C terminal."),
            ("Heading 2", "Wire colours"),
            ("table", "Colour|Terminal\nred|R\ngreen|G"),
            ("Heading 1", "Safety"),
            ("Normal", "Switch the breaker off before opening the unit."),
        ]
    )
    doc = parse("guide.docx", data)
    assert doc.metadata["title"] == "Halo installer guide"
    assert doc.metadata["type"] == "docx"
    sections = {s.section: doc.text[s.start : s.end] for s in doc.segments}
    assert "blue common wire" in sections["Wiring"]
    assert "red | R" in sections["Wire colours"]
    assert "breaker off" in sections["Safety"]
    assert "breaker" not in sections["Wiring"]


def test_docx_zip_bomb_is_refused_before_it_is_inflated() -> None:
    problem = refusal("bomb.docx", zip_bomb())
    assert problem.code == "too_large"
    assert "unpacks to" in problem.message or "compressed" in problem.message


def test_html_keeps_the_main_text_and_drops_navigation_scripts_and_styles() -> None:
    doc = parse("wiring.html", HTML_PAGE.encode())
    # trafilatura takes the page's own heading over the <title> of the site template.
    assert doc.metadata["title"] == "Wiring the Halo heat pump"
    assert "C terminal and powers the thermostat" in doc.text
    for noise in ("Sign in to your account", "ignore-this-script-text", "font-family", "Cookie"):
        assert noise not in doc.text
    sections = {s.section: doc.text[s.start : s.end] for s in doc.segments}
    assert "red wire to the R terminal" in sections["Terminal colours"]
    assert "code T0" in sections["Testing the installation"]


def test_markdown_headings_become_sections_over_the_text_as_written() -> None:
    text = (
        "# Troubleshooting\n\nIntro.\n\n## Error codes\n\nE3: sensor fault.\n\n"
        "```\n# not a heading\n```\n"
    )
    doc = parse("guides/troubleshooting.md", text.encode())
    assert doc.id == "guides/troubleshooting.md"
    assert doc.metadata["title"] == "Troubleshooting"
    assert [s.section for s in doc.segments] == ["Troubleshooting", "Error codes"]
    assert "".join(doc.text[s.start : s.end] for s in doc.segments) == text


def test_unsupported_type_is_named_in_the_refusal() -> None:
    assert file_type("photo.jpeg") is None
    problem = refusal("photo.jpeg", b"\xff\xd8\xff")
    assert problem.code == "unsupported_type"
    assert ".jpeg" in problem.message
    assert ".pdf" in problem.message


def test_sandboxed_parser_reads_a_pdf_and_passes_refusals_back() -> None:
    parser = FileParser(ParseLimits(timeout_s=60))
    try:
        [doc] = list(load_bytes("manual.pdf", pdf_bytes(MANUAL_PAGES), parser))
        assert isinstance(doc, LoadedDocument)
        assert "Code E7" in doc.text
        problem = refusal("scan.pdf", image_only_pdf(), parser)
        assert problem.code == "no_text"
    finally:
        parser.close()


def never_returns(kind: str, data: bytes, limits: ParseLimits) -> None:
    """Stand in for a parser stuck on a hostile file (run in the child process)."""
    time.sleep(3600)


def _in_child_with(parse: object, kind: str, data: bytes, limits: ParseLimits) -> None:
    """Run the sandbox's child entry point with ``parse`` standing in for the real parsers."""
    import retriever_service.parsing.sandbox as sandbox

    sandbox.parse_document = parse  # type: ignore[assignment]
    sandbox._parse_in_child(kind, data, limits)


def allocates_without_bound(kind: str, data: bytes, limits: ParseLimits) -> None:
    """Stand in for a decompression bomb the zip check cannot see (run in the child)."""
    blocks = []

    def inflate(*_: object) -> None:
        while True:
            blocks.append(bytearray(64 * 1024 * 1024))

    _in_child_with(inflate, kind, data, limits)


def test_sandboxed_parser_is_stopped_at_its_time_limit_and_recovers() -> None:
    parser = FileParser(ParseLimits(timeout_s=1.0), target=never_returns)
    try:
        started = time.monotonic()
        with pytest.raises(FileRejected) as caught:
            parser.parse("pdf", b"%PDF")
        assert caught.value.code == "parse_timeout"
        assert "PARSE_TIMEOUT_S" in caught.value.reason
        assert time.monotonic() - started < 30
    finally:
        parser.close()


def test_sandboxed_parser_bounds_memory() -> None:
    parser = FileParser(ParseLimits(timeout_s=60, memory_mb=512), target=allocates_without_bound)
    try:
        with pytest.raises(FileRejected) as caught:
            parser.parse("docx", b"PK")
        assert caught.value.code == "too_large"
        assert "PARSE_MEMORY_MB" in caught.value.reason
    finally:
        parser.close()


def raises_an_unexpected_error(kind: str, data: bytes, limits: ParseLimits) -> None:
    """Stand in for a parser library failing with its own error type (run in the child)."""

    def broken(*_: object) -> None:
        raise AttributeError("'NullObject' object has no attribute 'get_object'")

    _in_child_with(broken, kind, data, limits)


def test_any_parser_failure_is_that_files_refusal_not_a_crash() -> None:
    parser = FileParser(ParseLimits(timeout_s=60), target=raises_an_unexpected_error)
    try:
        with pytest.raises(FileRejected) as caught:
            parser.parse("pdf", b"%PDF")
        assert caught.value.code == "corrupt"
        assert "AttributeError" in caught.value.reason
    finally:
        parser.close()
    # Deeply nested JSON: Python's own recursion limit, reported for that file.
    problem = refusal("deep.json", b"[" * 100_000)
    assert problem.file == "deep.json"
    assert "cannot read file" in problem.message


def test_markdown_headings_lose_their_closing_hashes() -> None:
    doc = parse("notes.md", b"# Title ##\n\nIntro.\n\n## Error codes #\n\nE3.\n")
    assert doc.metadata["title"] == "Title"
    assert [s.section for s in doc.segments] == ["Title", "Error codes"]
