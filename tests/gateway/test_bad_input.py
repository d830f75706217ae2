"""Bad input to the gateway: 400/413/415/422 in the JSON envelope, never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.conftest import assert_error_envelope, error_fields
from tests.gateway.conftest import FakeRetriever


def post(client: Any, payload: Any) -> Any:
    return client.post("/v1/ask", json=payload)


def test_non_json_is_415(gateway: Any, fake_retriever: FakeRetriever) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        response = gateway.post(
            "/v1/ask", data=json.dumps({"question": "hi"}), content_type=content_type
        )
        assert_error_envelope(response, 415, "unsupported_media_type")
    assert fake_retriever.calls == []


@pytest.mark.parametrize(
    "raw",
    [b"{", b'{"question": "a",}', b"not json", b"", b"\xff\xfe{}", b"null", b"[" * 100_000],
)
def test_malformed_json_is_400(gateway: Any, raw: bytes) -> None:
    response = gateway.post("/v1/ask", data=raw, content_type="application/json")
    assert_error_envelope(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "question"),
        ({"question": ""}, "question"),
        ({"question": "   \n\t "}, "question"),
        ({"question": None}, "question"),
        ({"question": 42}, "question"),
        ({"question": ["how much?"]}, "question"),
        ({"question": "x" * 2001}, "question"),
        ({"question": "ok", "top_k": 0}, "top_k"),
        ({"question": "ok", "top_k": 21}, "top_k"),
        ({"question": "ok", "top_k": "5"}, "top_k"),
        ({"question": "ok", "top_k": 2.5}, "top_k"),
        ({"question": "ok", "top_k": True}, "top_k"),
        ({"question": "ok", "stream": "yes"}, "stream"),
        ({"question": "ok", "history": "earlier"}, "history"),
        ({"question": "ok", "history": {"role": "user", "text": "hi"}}, "history"),
        ({"question": "ok", "history": [{"role": "system", "text": "hi"}]}, "history.0.role"),
        ({"question": "ok", "history": [{"role": "user"}]}, "history.0.text"),
        ({"question": "ok", "history": [{"role": "user", "text": ""}]}, "history.0.text"),
        ({"question": "ok", "history": [{"role": "user", "text": 5}]}, "history.0.text"),
        ({"question": "ok", "history": ["hi"]}, "history.0"),
        ({"question": "ok", "history": [{"role": "user", "text": "a", "x": 1}]}, "history.0.x"),
        ({"question": "ok", "history": [{"role": "user", "text": "a"}] * 51}, "history"),
        ({"question": "ok", "collection": "a"}, "collection"),
        ({"question": "ok", "collection": "../etc"}, "collection"),
        ({"question": "ok", "temperature": 0.5}, "temperature"),
    ],
)
def test_invalid_fields_are_422_naming_the_field(
    gateway: Any, fake_retriever: FakeRetriever, payload: dict[str, Any], field: str
) -> None:
    error = assert_error_envelope(post(gateway, payload), 422, "validation_error")
    assert field in error_fields(error), error
    assert fake_retriever.calls == []


@pytest.mark.parametrize("payload", [[], "question", 3, [{"question": "hi"}]])
def test_a_body_that_is_not_an_object_is_422(gateway: Any, payload: Any) -> None:
    assert_error_envelope(post(gateway, payload), 422, "validation_error")


def test_question_of_2000_characters_is_accepted(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    question = ("How much does Comfort+ cost? " * 80)[:2000]
    assert len(question) == 2000
    response = post(gateway, {"question": question, "top_k": 20})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fake_retriever.calls_to("/v1/search")[0].body["query"] == question


@pytest.mark.parametrize("top_k", [1, 20])
def test_top_k_bounds_are_accepted(gateway: Any, top_k: int) -> None:
    assert post(gateway, {"question": "Comfort+ price?", "top_k": top_k}).status_code == 200


def test_oversized_body_is_413(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    client = make_gateway(max_body_bytes=1024).test_client()
    history = [{"role": "user", "text": "x" * 600}, {"role": "assistant", "text": "y" * 600}]
    error = assert_error_envelope(
        post(client, {"question": "Comfort+ price?", "history": history}),
        413,
        "payload_too_large",
    )
    assert "1024" in error["message"]
    assert fake_retriever.calls == []
    assert post(client, {"question": "Comfort+ price?"}).status_code == 200


def test_unknown_route_and_wrong_method_are_enveloped(gateway: Any) -> None:
    assert_error_envelope(gateway.get("/v1/nothing-here"), 404)
    assert_error_envelope(gateway.get("/v1/ask"), 405)
    assert_error_envelope(gateway.put("/v1/documents/x"), 405)


ODD_BODIES: list[tuple[bytes, str | None]] = [
    (b"[" * 100_000, "application/json"),
    (b'{"question": ' * 50_000, "application/json"),
    (json.dumps({"question": "a" * 100_000}).encode(), "application/json"),
    (json.dumps({"question": "\u0000\u0001 nul bytes"}).encode(), "application/json"),
    (json.dumps({"question": "\ud800 lone surrogate"}).encode(), "application/json"),
    (json.dumps({"question": "emoji 😀 and RTL \u202e text"}).encode(), "application/json"),
    (b'{"question": NaN}', "application/json"),
    (b'{"question": "ok", "top_k": 1e400}', "application/json"),
    (b'{"question": "ok", "top_k": ' + b"9" * 5000 + b"}", "application/json"),
    (b'{"question": "ok", "top_k": -Infinity}', "application/json"),
    (b'{"question": "ok", "history": [[[[[]]]]]}', "application/json"),
    (b'{"question": "ok", "history": [null]}', "application/json"),
    (b'{"question": "ok", "history": null}', "application/json"),
    (b'{"question": "ok", "stream": null}', "application/json"),
    (b'{"question": "ok", "question": 5}', "application/json"),
    (b'{"question": {"$ne": null}}', "application/json"),
    (b'"\xc3\x28"', "application/json"),
    (b'{"question": "ok"}', "application/json; charset=latin-1"),
    (b'{"question": "ok"}', "application/vnd.api+json"),
    (b'{"question": "ok"}', "text/json"),
    (b'{"question": "ok"}', "multipart/form-data; boundary=x"),
    (b"question=ok", "application/x-www-form-urlencoded"),
    (b"\x00" * 64, None),
]


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/documents"])
def test_odd_payloads_never_cause_a_server_error(
    make_gateway: Callable[..., Flask], path: str
) -> None:
    client = make_gateway(admin_api_key="admin-key").test_client()
    headers = {"Authorization": "Bearer admin-key"}
    for index, (body, content_type) in enumerate(ODD_BODIES):
        response = client.post(path, data=body, content_type=content_type, headers=headers)
        assert response.status_code < 500, (index, response.get_data(as_text=True)[:500])
        if response.status_code >= 400:
            assert_error_envelope(response, response.status_code)
        else:
            assert response.is_json or response.mimetype == "text/event-stream"
