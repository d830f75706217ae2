"""The chat page in headless Chromium (Debian's package, driven by Playwright for Python).

Needs ``pip install playwright==1.65.2`` and ``apt-get install -y chromium``; never
``playwright install``. Without them the tests fail, saying what is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO_ROOT
from tests.gateway.conftest import LiveStack

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
OUTPUT_DIR = REPO_ROOT / "test-output"
# A name that is not localhost, resolved by Chromium itself to the gateway's address: pages
# that would phone home only when served from a "real" host (e.g. Swagger UI's validator
# badge) are caught too.
DOCS_HOST = "gateway.test"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.fail(
            f"Playwright for Python is missing ({exc}): pip install playwright==1.65.2 "
            "(and never run `playwright install`)"
        )
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                f"--host-resolver-rules=MAP {DOCS_HOST} 127.0.0.1",
            ],
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1000, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.requested = []  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]
    page.on("request", lambda request: page.requested.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    # A Content-Security-Policy violation is a console error, not a page error: count it too.
    page.on(
        "console",
        lambda message: (
            page.errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    try:
        yield page
    finally:
        context.close()


def type_and_send(page: Any, question: str) -> None:
    """Keyboard only: the question box has the focus; Enter sends."""
    assert page.evaluate("document.activeElement.id") == "question"
    page.keyboard.type(question)
    page.keyboard.press("Enter")


def tab_to(page: Any, selector: str, limit: int = 30) -> None:
    """Press Tab until the focused element matches the selector."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement.matches(s)", selector):
            return
    pytest.fail(f"Tab never reached {selector}")


def test_ask_a_question_and_read_a_source_with_the_keyboard(
    live_stack: LiveStack, page: Any
) -> None:
    page.goto(f"{live_stack.url}/")
    # Waits by locator, never by evaluated strings: the page's CSP forbids eval, as it should.
    page.locator("#status", has_text=re.compile(r"^Ready\.")).wait_for()
    # The page names the model that writes the answers (the stack serves the tiny test model).
    status = page.locator("#status").text_content() or ""
    assert f"Answers are written by {live_stack.generator_env['GENERATOR_MODEL']}" in status, status
    type_and_send(page, "what kind of coin battery goes in the room sensor")

    answer = page.locator(".turn.assistant").nth(0)
    mode = answer.locator(".mode")
    mode.wait_for(state="visible")
    sources = answer.locator(".sources > li")
    sources.first.wait_for(state="visible")
    assert sources.count() >= 1
    assert "CR2477" in answer.locator(".text").inner_text()
    # The tiny model's text is not grounded: the answer is quoted, and says so.
    assert mode.inner_text() in {"quoted from the documents", "generated"}
    assert page.locator(".turn.user .text").first.inner_text() == (
        "what kind of coin battery goes in the room sensor"
    )
    # After sending, the focus is back in the question box, and the box is empty.
    assert page.evaluate("document.activeElement.id") == "question"
    assert page.input_value("#question") == ""

    snippet = answer.locator(".sources details").first.locator("blockquote")
    assert not snippet.is_visible()
    tab_to(page, ".sources summary")
    page.keyboard.press("Enter")
    snippet.wait_for(state="visible")
    assert "CR2477" in snippet.inner_text()
    summary = answer.locator(".sources summary").first.inner_text()
    assert "score" in summary

    OUTPUT_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(OUTPUT_DIR / "chat.png"), full_page=True)
    assert (OUTPUT_DIR / "chat.png").stat().st_size > 1000

    # A new conversation (keyboard again), so the question is not read as a follow-up.
    tab_to(page, "#clear")
    page.keyboard.press("Enter")
    assert page.locator(".turn").count() == 0
    type_and_send(page, "What is the capital of Mongolia?")
    refused = page.locator(".turn.assistant").nth(0).locator(".mode")
    refused.wait_for(state="visible")
    assert refused.inner_text() == "not in the documents"
    assert "could not find" in page.locator(".turn.assistant .text").first.inner_text()

    origin = urlsplit(live_stack.url).netloc
    assert page.requested, "no requests recorded"
    assert all(urlsplit(u).netloc == origin for u in page.requested), page.requested
    assert page.errors == []


def test_docs_render_from_local_assets_only(live_stack: LiveStack, page: Any) -> None:
    port = urlsplit(live_stack.url).port
    page.goto(f"http://{DOCS_HOST}:{port}/docs")
    page.get_by_text("/v1/ask").first.wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    hosts = {urlsplit(u).netloc for u in page.requested if not u.startswith("data:")}
    assert hosts == {f"{DOCS_HOST}:{port}"}, page.requested
    assert page.errors == []


def test_documents_panel_uploads_lists_and_deletes_a_file(
    live_stack: LiveStack, page: Any, tmp_path: Path
) -> None:
    from tests.gateway.conftest import LIVE_ADMIN_KEY
    from tests.retriever_service.sample_files import pdf_bytes

    manual = tmp_path / "kiosk-manual.pdf"
    manual.write_bytes(
        pdf_bytes(
            [
                "Lobby kiosk manual. Welcome.",
                "Resetting. Hold the kiosk power key for 12 seconds to reset it.",
            ],
            title="Lobby kiosk manual",
        )
    )
    page.goto(f"{live_stack.url}/")
    # Keyboard: open the panel, give the key, show the documents.
    tab_to(page, "#documents summary")
    page.keyboard.press("Enter")
    tab_to(page, "#admin-key")
    page.keyboard.type(LIVE_ADMIN_KEY)
    page.keyboard.press("Enter")
    page.locator("#document-count").wait_for(state="visible")
    before = page.locator("#document-rows tr").count()
    assert before > 0

    page.set_input_files("#files", str(manual))
    tab_to(page, "#upload")
    page.keyboard.press("Enter")
    page.locator("#upload-status", has_text="Done: 1 of 1").wait_for()
    assert page.locator("#upload-progress").evaluate("bar => bar.value") == 100
    assert "kiosk-manual.pdf: added" in page.locator("#upload-results").inner_text()
    row = page.locator("#document-rows tr", has_text="kiosk-manual.pdf")
    row.wait_for(state="visible")
    assert "Lobby kiosk manual" in row.inner_text()
    assert "pdf" in row.inner_text()

    # A file that cannot be read is reported by name, and stores nothing.
    broken = tmp_path / "broken.docx"
    broken.write_bytes(b"not a zip")
    page.set_input_files("#files", str(broken))
    page.click("#upload")
    page.locator("#upload-status", has_text="Done: 0 of 1").wait_for()
    assert "broken.docx: not added" in page.locator("#upload-results").inner_text()

    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete Lobby kiosk manual").click()
    page.locator("#upload-status", has_text="Deleted").wait_for()
    page.locator("#document-rows tr", has_text="kiosk-manual.pdf").wait_for(state="detached")
    assert page.locator("#document-rows tr").count() == before
    assert page.errors == []


def test_markup_in_documents_and_questions_is_shown_as_text(
    live_stack: LiveStack, page: Any
) -> None:
    markup = "<img src=x onerror=\"document.title='pwned'\"><b>bold</b>"
    text = f"The zephyrtoken badge opens the roof door. {markup} is printed on the badge."
    with live_stack.document("markup-badge", text):
        page.goto(f"{live_stack.url}/")
        page.locator("#status", has_text=re.compile(r"^Ready\.")).wait_for()
        question = "What does the zephyrtoken badge open? <i>now</i>"
        type_and_send(page, question)
        answer = page.locator(".turn.assistant").nth(0)
        answer.locator(".sources > li").first.wait_for(state="visible")
        # The question and the snippet read as written, characters and all, and make no element.
        assert page.locator(".turn.user .text").first.inner_text() == question
        snippets = answer.locator(".sources blockquote").all_text_contents()
        assert any(markup in snippet for snippet in snippets), snippets
        for tag in ("img", "b", "i"):
            assert page.locator(f".turn {tag}").count() == 0, tag
        assert page.title() != "pwned"
        assert page.errors == []
