"""Document administration behind ADMIN_API_KEY, /v1/ask behind API_KEYS, keys never logged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.conftest import assert_error_envelope
from tests.gateway.conftest import FakeRetriever

ADMIN_KEY = "admin-secret-7f3a9c"
ASK_KEYS = ("reader-key-one-1b2c", "reader-key-two-9d8e")
DOCUMENTS = {"documents": [{"id": "notes/a b", "text": "Halo runs on 24 volts."}]}
ODD_ID = "guides/getting started.md"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def admin_client(make_gateway: Callable[..., Flask]) -> Any:
    return make_gateway(admin_api_key=ADMIN_KEY).test_client()


# -- document routes --------------------------------------------------------------------------


@pytest.mark.parametrize("admin_api_key", [None, ""])
def test_document_routes_are_off_without_an_admin_key(
    make_gateway: Callable[..., Flask],
    fake_retriever: FakeRetriever,
    admin_api_key: str | None,
) -> None:
    client = make_gateway(admin_api_key=admin_api_key).test_client()
    for response in (
        client.post("/v1/documents", json=DOCUMENTS, headers=bearer(ADMIN_KEY)),
        client.delete(f"/v1/documents/{ODD_ID}", headers=bearer(ADMIN_KEY)),
        client.post("/v1/documents", json=DOCUMENTS),
    ):
        assert_error_envelope(response, 404, "admin_disabled")
    assert fake_retriever.calls == []


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": f"Basic {ADMIN_KEY}"}, {"Auth": "x"}],
)
def test_document_routes_without_a_key_are_401(
    admin_client: Any, fake_retriever: FakeRetriever, headers: dict[str, str]
) -> None:
    for response in (
        admin_client.post("/v1/documents", json=DOCUMENTS, headers=headers),
        admin_client.delete(f"/v1/documents/{ODD_ID}", headers=headers),
    ):
        assert_error_envelope(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert fake_retriever.calls == []


@pytest.mark.parametrize("key", ["wrong", ADMIN_KEY + "x", ADMIN_KEY[:-1], ADMIN_KEY.upper()])
def test_document_routes_with_a_wrong_key_are_403(
    admin_client: Any, fake_retriever: FakeRetriever, key: str
) -> None:
    for response in (
        admin_client.post("/v1/documents", json=DOCUMENTS, headers=bearer(key)),
        admin_client.delete(f"/v1/documents/{ODD_ID}", headers=bearer(key)),
    ):
        assert_error_envelope(response, 403, "forbidden")
    assert fake_retriever.calls == []


def test_an_ask_key_does_not_open_document_routes(make_gateway: Callable[..., Flask]) -> None:
    client = make_gateway(admin_api_key=ADMIN_KEY, api_keys=ASK_KEYS[0]).test_client()
    response = client.post("/v1/documents", json=DOCUMENTS, headers=bearer(ASK_KEYS[0]))
    assert_error_envelope(response, 403, "forbidden")


def test_documents_are_forwarded_with_the_right_key(
    admin_client: Any, fake_retriever: FakeRetriever
) -> None:
    fake_retriever.documents_response = {"documents": 1, "chunks": 4, "created": 1}
    response = admin_client.post(
        "/v1/documents",
        json={**DOCUMENTS, "collection": "manuals"},
        headers={**bearer(ADMIN_KEY), "X-Request-ID": "admin-1"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json() == {"documents": 1, "chunks": 4, "created": 1}
    (call,) = fake_retriever.calls_to("/v1/documents")
    assert call.body == {
        "documents": [{"id": "notes/a b", "text": "Halo runs on 24 volts.", "metadata": {}}],
        "collection": "manuals",
    }
    assert call.headers["X-Request-Id"] == "admin-1"
    # The key is the gateway's; it is not passed on.
    assert "Authorization" not in call.headers


def test_delete_forwards_an_id_with_a_slash_and_a_space(
    admin_client: Any, fake_retriever: FakeRetriever
) -> None:
    fake_retriever.known_documents.add(ODD_ID)
    response = admin_client.delete(
        "/v1/documents/guides/getting%20started.md?collection=manuals", headers=bearer(ADMIN_KEY)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["deleted_chunks"] == 3
    (call,) = [c for c in fake_retriever.calls if c.method == "DELETE"]
    assert call.path == f"/v1/documents/{ODD_ID}"
    assert "Authorization" not in call.headers


@pytest.mark.parametrize("document_id", ["what?.md", "100%.txt", "a#b", "naïve café"])
def test_delete_forwards_ids_with_url_special_characters(
    admin_client: Any, fake_retriever: FakeRetriever, document_id: str
) -> None:
    from urllib.parse import quote

    fake_retriever.known_documents.add(document_id)
    response = admin_client.delete(
        f"/v1/documents/{quote(document_id, safe='')}", headers=bearer(ADMIN_KEY)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    (call,) = [c for c in fake_retriever.calls if c.method == "DELETE"]
    assert call.path == f"/v1/documents/{document_id}"


@pytest.mark.parametrize("document_id", ["notes/../faq-001", "a/./b", "..", "x/.."])
def test_delete_never_turns_an_id_with_dot_segments_into_another_id(
    admin_client: Any, fake_retriever: FakeRetriever, document_id: str
) -> None:
    # HTTP clients resolve "." and ".." path segments: forwarded as is, deleting
    # "notes/../faq-001" would delete the document "faq-001".
    fake_retriever.known_documents.update({document_id, "faq-001", "a/b"})
    response = admin_client.delete(f"/v1/documents/{document_id}", headers=bearer(ADMIN_KEY))
    calls = [c for c in fake_retriever.calls if c.method == "DELETE"]
    assert [c.path for c in calls] == [f"/v1/documents/{document_id}"]
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["id"] == document_id


def test_retriever_404_passes_through(admin_client: Any) -> None:
    response = admin_client.delete("/v1/documents/no-such-doc", headers=bearer(ADMIN_KEY))
    error = assert_error_envelope(response, 404, "document_not_found")
    assert "no-such-doc" in error["message"]


def test_document_body_is_validated_before_forwarding(
    admin_client: Any, fake_retriever: FakeRetriever
) -> None:
    for payload in ({"documents": []}, {"documents": [{"text": ""}]}, {"docs": []}):
        response = admin_client.post("/v1/documents", json=payload, headers=bearer(ADMIN_KEY))
        assert_error_envelope(response, 422, "validation_error")
    assert fake_retriever.calls == []


def test_document_routes_with_retriever_down_are_503(
    make_gateway: Callable[..., Flask], closed_url: str
) -> None:
    client = make_gateway(admin_api_key=ADMIN_KEY, retriever_url=closed_url).test_client()
    response = client.post("/v1/documents", json=DOCUMENTS, headers=bearer(ADMIN_KEY))
    assert_error_envelope(response, 503, "dependency_unavailable")


# -- /v1/ask keys -----------------------------------------------------------------------------


def test_ask_is_open_without_api_keys(gateway: Any) -> None:
    assert gateway.post("/v1/ask", json={"question": "Comfort+ price?"}).status_code == 200


def test_ask_keys(make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever) -> None:
    client = make_gateway(
        api_keys=f" {ASK_KEYS[0]} ,{ASK_KEYS[1]}", admin_api_key=ADMIN_KEY
    ).test_client()
    body = {"question": "How much does Comfort+ cost?"}
    missing = client.post("/v1/ask", json=body)
    assert_error_envelope(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error_envelope(client.post("/v1/ask", json=body, headers=bearer("nope")), 403)
    # Streaming asks are checked before anything is streamed.
    stream = client.post("/v1/ask", json={**body, "stream": True}, headers=bearer("nope"))
    assert_error_envelope(stream, 403, "forbidden")
    assert fake_retriever.calls == []
    for key in (*ASK_KEYS, ADMIN_KEY):
        ok = client.post("/v1/ask", json=body, headers=bearer(key))
        assert ok.status_code == 200, ok.get_data(as_text=True)
    lower = client.post("/v1/ask", json=body, headers={"Authorization": f"bearer {ASK_KEYS[0]}"})
    assert lower.status_code == 200


def test_keys_never_appear_in_logs_or_responses(
    make_gateway: Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    fake_retriever: FakeRetriever,
) -> None:
    app = make_gateway(admin_api_key=ADMIN_KEY, api_keys=",".join(ASK_KEYS), log_level="DEBUG")
    # create_app installs the service's own log handler on the root logger (replacing
    # pytest's): put caplog's back beside it, so both the records and stderr are checked.
    logging.getLogger().addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    client = app.test_client()
    wrong_key = "wrong-key-5e6f7a8b"
    fake_retriever.known_documents.add("doc-1")
    fake_retriever.fail["/v1/embed"] = 500  # a warning logged mid-request, too
    responses = [
        client.post("/v1/ask", json={"question": "Comfort+ price?"}, headers=bearer(ASK_KEYS[0])),
        client.post("/v1/ask", json={"question": "Comfort+ price?"}, headers=bearer(wrong_key)),
        client.post("/v1/ask", json={"question": 3}, headers=bearer(ASK_KEYS[1])),
        client.post("/v1/documents", json=DOCUMENTS, headers=bearer(ADMIN_KEY)),
        client.post("/v1/documents", json=DOCUMENTS, headers=bearer(wrong_key)),
        client.delete("/v1/documents/doc-1", headers=bearer(ADMIN_KEY)),
        client.delete("/v1/documents/missing", headers=bearer(ADMIN_KEY)),
    ]
    assert [r.status_code for r in responses] == [200, 403, 422, 200, 403, 200, 404]
    logging.getLogger().removeHandler(caplog.handler)
    stderr = capfd.readouterr().err
    assert "access" in caplog.text
    assert "POST /v1/ask" in stderr
    secrets = (ADMIN_KEY, *ASK_KEYS, wrong_key)
    for secret in secrets:
        assert secret not in caplog.text
        assert secret not in stderr
        for response in responses:
            assert secret not in response.get_data(as_text=True)
    # The settings object masks them too, should anything log it.
    config_text = repr(app.extensions["answerer"].config)
    assert not any(secret in config_text for secret in secrets)


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/documents"), ("DELETE", f"/v1/documents/{ODD_ID}")],
)
def test_document_writes_wait_for_the_upload_timeout_not_the_search_timeout(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever, method: str, path: str
) -> None:
    fake_retriever.documents_response = {"documents": 1, "chunks": 1, "created": 1}
    fake_retriever.known_documents.add(ODD_ID)
    fake_retriever.delay_s[path] = 1.5  # past the search timeout, inside the upload timeout
    url = "/v1/documents" if method == "POST" else "/v1/documents/guides/getting%20started.md"
    body = DOCUMENTS if method == "POST" else None

    patient = make_gateway(
        admin_api_key=ADMIN_KEY, retriever_read_timeout_s=0.5, upload_timeout_s=10.0
    ).test_client()
    response = patient.open(url, method=method, json=body, headers=bearer(ADMIN_KEY))
    assert response.status_code == 200, response.get_data(as_text=True)

    hasty = make_gateway(
        admin_api_key=ADMIN_KEY, retriever_read_timeout_s=10.0, upload_timeout_s=0.5
    ).test_client()
    response = hasty.open(url, method=method, json=body, headers=bearer(ADMIN_KEY))
    assert_error_envelope(response, 504, "dependency_timeout")
