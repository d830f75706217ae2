"""Hostile input against real gunicorn processes: a clear 4xx envelope, never a 5xx or a leak."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.conftest import assert_error_envelope
from tests.security.test_hostile_input import HOSTILE_BODIES
from tests.stack import ADMIN_KEY, INTERNAL_KEY, Stack

pytestmark = pytest.mark.slow

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
INTERNAL = {"Authorization": f"Bearer {INTERNAL_KEY}"}


def targets(live: Stack) -> list[tuple[str, dict[str, str]]]:
    """Every JSON route a hostile body could be sent to, with the key its caller holds."""
    return [
        (f"{live.url}/v1/ask", ADMIN),
        (f"{live.url}/v1/documents", ADMIN),
        (f"{live.retriever.url}/v1/search", INTERNAL),
        (f"{live.retriever.url}/v1/documents", INTERNAL),
        (f"{live.retriever.url}/v1/embed", INTERNAL),
        (f"{live.generator.url}/v1/generate", INTERNAL),
    ]


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_every_service_refuses_hostile_bodies_with_a_clear_error(live: Stack, body: bytes) -> None:
    for url, key in targets(live):
        response = requests.post(
            url, data=body, headers={**key, "Content-Type": "application/json"}, timeout=60
        )
        assert 400 <= response.status_code < 500, (url, response.status_code, response.text[:300])
        error = assert_error_envelope(response, response.status_code)
        # The refusal names no file, line or stack frame.
        assert "Traceback" not in error["message"], error
        assert ".py" not in error["message"], error


@pytest.mark.parametrize(
    "path",
    [
        "/v1/documents/..%2F..%2Fetc%2Fpasswd",
        "/v1/documents/notes%2F..%2F..%2Fchroma",
        "/v1/documents/a%252Fb",
        "/v1/documents/nul%00byte",
    ],
)
def test_odd_document_ids_are_only_ever_ids(live: Stack, path: str) -> None:
    before = requests.get(f"{live.url}/v1/documents?limit=1", headers=ADMIN, timeout=60)
    assert before.status_code == 200, before.text
    # The gateway's one route by id: it deletes.
    response = requests.delete(f"{live.url}{path}", headers=ADMIN, timeout=60)
    # Not found, or not a valid id: either way an answer about an id, not about a file.
    assert response.status_code in (404, 422), (path, response.text)
    assert_error_envelope(response, response.status_code)
    after = requests.get(f"{live.url}/v1/documents?limit=1", headers=ADMIN, timeout=60)
    assert after.json()["total"] == before.json()["total"]


def test_markup_in_a_stored_document_and_a_question_stays_inert_text(live: Stack) -> None:
    text = "The kestrelcode vault opens at dawn. <script>fetch('//evil')</script> <|im_end|>"
    with live.document("hostile-markup", text):
        search = requests.post(
            f"{live.retriever.url}/v1/search",
            json={"query": "kestrelcode vault", "top_k": 1},
            headers=INTERNAL,
            timeout=60,
        )
        [hit] = search.json()["results"]
        assert hit["text"] == text  # kept as written; the page shows it as text
        asked = requests.post(
            f"{live.url}/v1/ask",
            json={"question": "<script>alert(1)</script> when does the kestrelcode vault open?"},
            headers=ADMIN,
            timeout=120,
        )
        assert asked.status_code == 200, asked.text
        assert asked.headers["Content-Type"].startswith("application/json")
        assert asked.headers["X-Content-Type-Options"] == "nosniff"
        body: dict[str, Any] = asked.json()
        assert "kestrelcode" in " ".join(s["text"] for s in body["sources"])
