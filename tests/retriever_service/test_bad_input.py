"""Every bad input from the issue: the right 4xx, the JSON envelope, and nothing stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from qa_common.process import free_port
from tests.conftest import assert_error_envelope, error_fields

GOOD_DOC = {"id": "good", "text": "The thermostat supports 2.4 GHz Wi-Fi networks."}


def chunk_count(client: Any) -> int:
    response = client.get("/v1/stats")
    assert response.status_code == 200
    return response.get_json()["chunks"]


@pytest.fixture
def seeded(client: Any) -> Any:
    """A client whose store already holds one document, to prove nothing is lost or added."""
    response = client.post("/v1/documents", json={"documents": [GOOD_DOC]})
    assert response.status_code == 200
    assert chunk_count(client) == 1
    return client


# -- not JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/documents", "/v1/search", "/v1/embed"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_non_json_body_is_415(seeded: Any, path: str, content_type: str | None) -> None:
    body = json.dumps({"documents": [{"text": "x"}], "query": "x", "texts": ["x"]})
    headers = {"Content-Type": content_type} if content_type else {}
    assert_error_envelope(
        seeded.post(path, data=body, headers=headers), 415, "unsupported_media_type"
    )
    assert chunk_count(seeded) == 1


@pytest.mark.parametrize("path", ["/v1/documents", "/v1/search", "/v1/embed"])
@pytest.mark.parametrize("raw", ['{"query": ', "{bad json}", "", "\x00\x01", '{"a": 1} trailing'])
def test_malformed_json_is_400(seeded: Any, path: str, raw: str) -> None:
    response = seeded.post(path, data=raw, content_type="application/json")
    assert_error_envelope(response, 400, "invalid_json")
    assert chunk_count(seeded) == 1


# -- wrongly typed fields ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"query": "x", "top_k": "5"}, "top_k"),
        ({"query": "x", "top_k": 5.5}, "top_k"),
        ({"query": "x", "top_k": True}, "top_k"),
        ({"query": 5}, "query"),
        ({"query": ["x"]}, "query"),
        ({}, "query"),
        ({"query": "x", "min_score": "high"}, "min_score"),
        ({"query": "x", "min_score": 2}, "min_score"),
        ({"query": "x", "where": "category=a"}, "where"),
        ({"query": "x", "collection": 7}, "collection"),
        ({"query": "x", "unknown": 1}, "unknown"),
        ({"query": ""}, "query"),
        ({"query": "   \n\t"}, "query"),
        ({"query": "x" * 10_001}, "query"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "top_k": 51}, "top_k"),
        ({"query": "x", "top_k": -1}, "top_k"),
        ({"query": "x", "top_k": 10**30}, "top_k"),
    ],
)
def test_bad_search_is_422_naming_field(client: Any, payload: Any, field: str) -> None:
    error = assert_error_envelope(client.post("/v1/search", json=payload), 422, "validation_error")
    assert field in error_fields(error), error
    assert field in error["message"]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"text": 5}, "documents.0.text"),
        ({"text": None}, "documents.0.text"),
        ({"text": ""}, "documents.0.text"),
        ({"text": "  \n\t "}, "documents.0.text"),
        ({}, "documents.0.text"),
        ({"text": "ok", "id": 5}, "documents.0.id"),
        ({"text": "ok", "id": ""}, "documents.0.id"),
        ({"text": "ok", "id": "line\nbreak"}, "documents.0.id"),
        ({"text": "ok", "metadata": {"tags": ["a", "b"]}}, "documents.0.metadata.tags"),
        ({"text": "ok", "metadata": {"k": None}}, "documents.0.metadata.k"),
        ({"text": "ok", "metadata": {"k": {"nested": 1}}}, "documents.0.metadata.k"),
        ({"text": "ok", "metadata": ["k"]}, "documents.0.metadata"),
        ({"text": "ok", "metadata": {"_x": "reserved"}}, "documents.0.metadata"),
        ({"text": "ok", "metadata": {"": "empty key"}}, "documents.0.metadata"),
        ({"text": "ok", "extra": True}, "documents.0.extra"),
    ],
)
def test_bad_document_is_422_naming_field_and_stores_nothing(
    seeded: Any, document: dict[str, Any], field: str
) -> None:
    response = seeded.post("/v1/documents", json={"documents": [document]})
    error = assert_error_envelope(response, 422, "validation_error")
    assert any(f.startswith(field) for f in error_fields(error)), error
    assert chunk_count(seeded) == 1


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"documents": []}, "documents"),
        ({"documents": {"text": "x"}}, "documents"),
        ({"documents": "x"}, "documents"),
        ({}, "documents"),
        ({"documents": [{"text": "x"}], "unknown": 1}, "unknown"),
    ],
)
def test_bad_ingest_body_is_422(seeded: Any, payload: Any, field: str) -> None:
    error = assert_error_envelope(seeded.post("/v1/documents", json=payload), 422)
    assert field in error_fields(error)
    assert chunk_count(seeded) == 1


def test_reserved_metadata_key_is_rejected(seeded: Any) -> None:
    doc = {"id": "evil", "text": "spoof", "metadata": {"_document_id": "good"}}
    error = assert_error_envelope(seeded.post("/v1/documents", json={"documents": [doc]}), 422)
    assert "reserved" in json.dumps(error)
    assert chunk_count(seeded) == 1


@pytest.mark.parametrize(
    "documents",
    [
        [{"id": "same", "text": "one"}, {"id": "same", "text": "two"}],
        [{"text": "identical"}, {"text": "identical"}],
        [{"id": "x", "text": "one"}, {"id": "y", "text": "two"}, {"id": "x", "text": "three"}],
    ],
)
def test_duplicate_ids_in_one_request_are_422(seeded: Any, documents: list[Any]) -> None:
    error = assert_error_envelope(
        seeded.post("/v1/documents", json={"documents": documents}), 422, "validation_error"
    )
    assert "documents" in error_fields(error)
    assert chunk_count(seeded) == 1


def test_one_invalid_document_rejects_the_request_and_stores_nothing(seeded: Any) -> None:
    documents = [
        {"id": "a", "text": "A valid document about furnaces."},
        {"id": "good", "text": "A changed version of the seeded document."},
        {"id": "c", "text": "   "},
        {"id": "d", "text": "Another valid document."},
    ]
    error = assert_error_envelope(seeded.post("/v1/documents", json={"documents": documents}), 422)
    assert "documents.2.text" in error_fields(error)
    assert chunk_count(seeded) == 1
    hit = seeded.post("/v1/search", json={"query": "furnaces", "top_k": 5}).get_json()["results"]
    assert [h["text"] for h in hit] == [GOOD_DOC["text"]]


# -- size, ids, dependencies ------------------------------------------------------------------


def test_too_large_body_is_413(make_app: Any) -> None:
    client = make_app(max_body_bytes=2048).test_client()
    big = {"documents": [{"id": "big", "text": "word " * 1000}]}
    error = assert_error_envelope(client.post("/v1/documents", json=big), 413, "payload_too_large")
    assert "2048" in error["message"]
    assert_error_envelope(client.post("/v1/search", json={"query": "q" * 5000}), 413)
    assert chunk_count(client) == 0
    assert client.post("/v1/documents", json={"documents": [GOOD_DOC]}).status_code == 200


def test_unknown_document_on_delete_is_404(seeded: Any) -> None:
    assert_error_envelope(seeded.delete("/v1/documents/missing"), 404, "document_not_found")
    assert chunk_count(seeded) == 1


def test_unknown_route_and_wrong_method(client: Any) -> None:
    assert_error_envelope(client.get("/v1/nothing"), 404)
    assert_error_envelope(client.get("/v1/search"), 405)
    assert_error_envelope(client.put("/v1/documents", json={}), 405)


@pytest.mark.timeout(120)  # a deadlock on reconnect must fail, not hang the suite
def test_unreachable_chroma_is_503_on_requests_and_readyz(make_app: Any) -> None:
    client = make_app(chroma_host="127.0.0.1", chroma_port=free_port()).test_client()
    assert client.get("/healthz").status_code == 200
    error = assert_error_envelope(client.get("/readyz"), 503, "not_ready")
    assert "cannot be reached" in error["message"]
    for response in (
        client.post("/v1/search", json={"query": "anything"}),
        client.post("/v1/documents", json={"documents": [GOOD_DOC]}),
        client.delete("/v1/documents/good"),
        client.get("/v1/stats"),
    ):
        assert_error_envelope(response, 503, "dependency_unavailable")
    # The model does not need the store.
    assert client.post("/v1/embed", json={"texts": ["still works"]}).status_code == 200


# -- no input makes a 500 ---------------------------------------------------------------------

_ODD_SEARCH = [
    [],
    "str",
    None,
    42,
    {"query": {"nested": ["junk", {"deeper": None}]}},
    {"query": "x", "top_k": 10**100},
    {"query": "x", "top_k": None},
    {"query": "x", "min_score": None, "where": None, "collection": None},
    {"query": "x", "where": {"category": {"$bogus": 1}}},
    {"query": "x", "where": {"$and": []}},
    {"query": "x", "where": {"$and": [{"category": "a"}]}},
    {"query": "x", "where": {"$or": "nope"}},
    {"query": "x", "where": {"category": None}},
    {"query": "x", "where": {"category": ["a", "b"]}},
    {"query": "x", "where": {"year": {"$gt": "text"}}},
    {"query": "x", "where": {"category": {"$in": []}}},
    {"query": "x", "where": {"category": {"$in": "a"}}},
    {"query": "x", "where": {"": "a"}},
    {"query": "x", "where": {"a": "b", "c": "d", "$and": 1}},
    {"query": "\x00\x01\x02"},
    {"query": "x", "collection": "../../etc"},
]

_ODD_INGEST = [
    [],
    "str",
    None,
    {"documents": None},
    {"documents": [None]},
    {"documents": [[]]},
    {"documents": ["just text"]},
    {"documents": [{"text": "ok", "metadata": {"k": float("inf")}}]},
    {"documents": [{"text": "ok", "metadata": {"k": float("nan")}}]},
    {"documents": [{"text": "ok", "metadata": {"k": 10**40}}]},
    {"documents": [{"text": "ok", "id": "x" * 600}]},
    {"documents": [{"text": "\x00 nul byte inside"}]},
    {"documents": [{"text": "ok", "metadata": {"k" * 300: 1}}]},
    {"documents": [{"text": {"nested": "junk"}}]},
    {"documents": [{"id": "a/../../b", "text": "path-like id"}], "collection": "x" * 600},
]


def _post_raw(client: Any, path: str, payload: Any) -> Any:
    # allow_nan: Python's json (and Flask's parser) accept NaN and Infinity literals.
    data = json.dumps(payload, allow_nan=True)
    return client.post(path, data=data, content_type="application/json")


@pytest.mark.parametrize("payload", _ODD_SEARCH, ids=lambda p: json.dumps(p)[:40])
def test_odd_search_payloads_never_500(seeded: Any, payload: Any) -> None:
    response = _post_raw(seeded, "/v1/search", payload)
    assert response.status_code < 500, response.get_json()
    if response.status_code >= 400:
        assert_error_envelope(response, response.status_code)
    assert chunk_count(seeded) == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"query": "x", "where": {"category": {"$bogus": 1}}},
        {"query": "x", "where": {"$and": [{"category": "a"}]}},
        {"query": "x", "where": {"category": ["a", "b"]}},
    ],
)
def test_invalid_where_is_422_naming_where(seeded: Any, payload: Any) -> None:
    error = assert_error_envelope(seeded.post("/v1/search", json=payload), 422, "validation_error")
    assert "where" in error_fields(error)


@pytest.mark.parametrize("payload", _ODD_INGEST, ids=lambda p: json.dumps(p)[:40])
def test_odd_ingest_payloads_never_500(seeded: Any, payload: Any) -> None:
    response = _post_raw(seeded, "/v1/documents", payload)
    assert response.status_code < 500, response.get_json()
    if response.status_code >= 400:
        assert_error_envelope(response, response.status_code)
        assert chunk_count(seeded) == 1
    # Whatever was accepted, the seeded document is still there and searchable.
    hits = seeded.post("/v1/search", json={"query": "Wi-Fi networks", "top_k": 50}).get_json()
    assert "good" in {h["document_id"] for h in hits["results"]}


@pytest.mark.parametrize(
    "payload", [[], "str", None, {"texts": [None]}, {"texts": [1, 2]}, {"texts": "x" * 10}]
)
def test_odd_embed_payloads_never_500(client: Any, payload: Any) -> None:
    response = _post_raw(client, "/v1/embed", payload)
    assert 400 <= response.status_code < 500
    assert_error_envelope(response, response.status_code)


@pytest.mark.parametrize(
    "url",
    [
        "/v1/stats?collection=a",
        "/v1/stats?collection=" + "x" * 600,
        "/v1/documents/x?collection=%00",
        "/v1/documents/%00%01",
        "/v1/collections/ab",
        "/v1/collections/a%2Fb",
    ],
)
def test_odd_urls_never_500(seeded: Any, url: str) -> None:
    for response in (seeded.get(url), seeded.delete(url)):
        assert response.status_code < 500, (url, response.get_json())
        if response.status_code >= 400:
            assert_error_envelope(response, response.status_code)
    assert chunk_count(seeded) == 1
