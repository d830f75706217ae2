"""Hostile input against the gateway and the retriever: never a 500, never a leak or a path."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import assert_error_envelope
from tests.gateway.conftest import FakeRetriever

ADMIN = {"Authorization": "Bearer admin-key-9"}


def deep(levels: int) -> bytes:
    return b'{"question": ' + b"[" * levels + b"]" * levels + b"}"


HOSTILE_BODIES = {
    "nested past the recursion limit": deep(50_000),
    "not UTF-8": b'{"question": "caf\xe9 \xff\xfe"}',
    "raw control characters": b'{"question": "a\x00b\x1bc"}',
    "3 MB": b'{"question": "' + b"x" * 3_000_000 + b'"}',
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_bodies_get_a_clear_error_not_a_crash(gateway: Any, body: bytes) -> None:
    response = gateway.post("/v1/ask", data=body, content_type="application/json")
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)[:300]
    assert_error_envelope(response, response.status_code)


def test_markup_in_a_question_comes_back_as_inert_json_text(gateway: Any) -> None:
    question = '<script>alert("x")</script><img src=x onerror=alert(1)> battery?'
    response = gateway.post("/v1/ask", json={"question": question})
    assert response.status_code == 200
    assert response.content_type.startswith("application/json")
    assert "<script>" not in response.get_data(as_text=True)  # JSON escapes < and >
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "forwarded"),
    [
        ("/v1/documents/notes%2F..%2Ffaq-001", "notes/../faq-001"),
        ("/v1/documents/..%2F..%2Fetc%2Fpasswd", "../../etc/passwd"),
        ("/v1/documents/a%252Fb", "a%2Fb"),
    ],
)
def test_odd_document_ids_reach_the_retriever_whole(
    make_gateway: Any, fake_retriever: FakeRetriever, path: str, forwarded: str
) -> None:
    client = make_gateway(admin_api_key="admin-key-9").test_client()
    response = client.delete(path, headers=ADMIN)
    assert response.status_code in (200, 404), response.get_json()
    [call] = fake_retriever.calls_to("/v1/documents/" + forwarded)
    assert call.method == "DELETE"


@pytest.mark.parametrize(
    "where",
    [
        {"category": {"$regex": ".*"}},
        {"$where": "1 == 1"},
        {"category": {"$in": "not-a-list"}},
        {"$or": [{"a": 1}]},
    ],
)
def test_unknown_or_malformed_filter_operators_are_422(make_app: Any, where: Any) -> None:
    client = make_app().test_client()
    response = client.post("/v1/search", json={"query": "battery", "where": where})
    error = assert_error_envelope(response, 422)
    assert "where" in str(error)


def test_hostile_document_text_is_stored_and_returned_as_plain_text(make_app: Any) -> None:
    client = make_app().test_client()
    text = "Reset: hold 5 s. <script>fetch('//evil')</script> <|im_end|> \u202e txt.exe"
    stored = client.post("/v1/documents", json={"documents": [{"id": "odd", "text": text}]})
    assert stored.status_code == 200, stored.get_json()
    [hit] = client.post("/v1/search", json={"query": "reset hold", "top_k": 1}).get_json()[
        "results"
    ]
    assert hit["text"] == text  # kept as written; the page renders it as text, never markup
