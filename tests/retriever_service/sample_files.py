"""Real files built in the tests: PDFs (pages, bookmarks, an image-only page, encryption), Word
documents with headings, web pages with navigation noise, and hostile zips."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence


def pdf_bytes(
    pages: Sequence[str],
    *,
    bookmarks: dict[int, str] | None = None,
    title: str | None = None,
    user_password: str | None = None,
) -> bytes:
    """Write a PDF with one text page per entry; ``bookmarks`` maps page number → outline title."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    if title:
        pdf.set_title(title)
    for number, text in enumerate(pages, start=1):
        pdf.add_page()
        if bookmarks and number in bookmarks:
            pdf.start_section(bookmarks[number])
        pdf.multi_cell(0, 8, text)
    if user_password is not None:
        pdf.set_encryption(owner_password="owner-secret", user_password=user_password)
    return bytes(pdf.output())


def image_only_pdf() -> bytes:
    """Write a PDF whose only page is a picture of text: no text layer at all."""
    from fpdf import FPDF
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (400, 120), "white")
    ImageDraw.Draw(picture).text((10, 50), "Scanned invoice 2024-117", fill="black")
    pdf = FPDF()
    pdf.add_page()
    pdf.image(picture, x=10, y=10, w=180)
    return bytes(pdf.output())


def docx_bytes(blocks: Sequence[tuple[str, str]], *, title: str | None = None) -> bytes:
    """Write a .docx of (style, text) blocks: "Title", "Heading 1", "Heading 2", "Normal"..."""
    import docx

    document = docx.Document()
    if title:
        document.core_properties.title = title
    for style, text in blocks:
        if style == "table":
            rows = [r.split("|") for r in text.split("\n")]
            table = document.add_table(rows=len(rows), cols=len(rows[0]))
            for i, row in enumerate(rows):
                for j, cell in enumerate(row):
                    table.cell(i, j).text = cell.strip()
        else:
            document.add_paragraph(text, style=style)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def zip_bomb(name: str = "word/document.xml", size: int = 300 * 1024 * 1024) -> bytes:
    """Write a zip whose one entry inflates from a few hundred KB to ``size`` bytes."""
    buffer = io.BytesIO()
    block = b"\0" * (1024 * 1024)
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open(name, "w", force_zip64=True) as entry,
    ):
        for _ in range(size // len(block)):
            entry.write(block)
    return buffer.getvalue()


HTML_PAGE = """<!doctype html>
<html><head><title>Halo heat pump: wiring guide</title>
<style>body { font-family: sans-serif } .nav { color: red }</style>
<script>window.tracking = "ignore-this-script-text";</script></head>
<body>
<header><nav class="nav"><a href="/">Home</a> | <a href="/shop">Shop the store</a> |
<a href="/login">Sign in to your account</a></nav></header>
<main><article>
<h1>Wiring the Halo heat pump</h1>
<p>Before wiring, switch off the breaker that feeds the outdoor unit and wait five minutes for the
capacitors to discharge. The Halo heat pump uses a 24 volt control circuit.</p>
<h2>Terminal colours</h2>
<p>Connect the red wire to the R terminal, the white wire to W1, and the green wire to G. The blue
common wire goes to the C terminal and powers the thermostat continuously.</p>
<h2>Testing the installation</h2>
<p>Turn the breaker back on and run the heating test from the installer menu. The outdoor fan should
start within ninety seconds, and the display shows code T0 when the test passes.</p>
</article></main>
<aside>Related products: smart vents, air filters, remote sensors.</aside>
<footer>Copyright 2026 Halo Climate. Privacy policy. Cookie settings.</footer>
</body></html>
"""
