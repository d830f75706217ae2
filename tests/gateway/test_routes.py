"""Everything besides answering: health, readiness, metrics, OpenAPI, /docs and the chat page."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import jsonschema
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from gateway.schemas import AskResponse
from tests.conftest import assert_error_envelope
from tests.gateway.conftest import FakeGenerator, FakeRetriever

EXTERNAL_URL = re.compile(r"""(https?:)?//[A-Za-z0-9.-]+""")


class _Assets(HTMLParser):
    """Collect the URLs a page loads: scripts, stylesheets, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script" and not values.get("src"):
            self.inline_scripts += 1
        for name in ("src", "href"):
            value = values.get(name)
            if value and tag in ("script", "link", "img", "iframe", "source"):
                self.urls.append(value)


def assets_of(html: str) -> _Assets:
    parser = _Assets()
    parser.feed(html)
    return parser


def assert_local_assets(client: Any, html: str) -> list[str]:
    """Every asset the page loads is a path on this server, and answers 200."""
    urls = assets_of(html).urls
    assert urls, "the page loads no assets at all"
    for url in urls:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.data, url
    return urls


# -- probes and metrics -----------------------------------------------------------------------


def test_healthz(gateway: Any, fake_retriever: FakeRetriever) -> None:
    response = gateway.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert fake_retriever.calls == []  # liveness asks nobody


def test_readyz_is_ready_with_both_services(gateway: Any) -> None:
    response = gateway.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["retriever"] == "ready"
    assert body["generator"] == "ready"


def test_readyz_is_ready_but_says_so_when_the_generator_is_down(
    make_gateway: Callable[..., Flask], closed_url: str
) -> None:
    response = make_gateway(generator_url=closed_url).test_client().get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["retriever"] == "ready"
    assert body["generator"].startswith("unavailable")


def test_readyz_reports_a_generator_that_is_not_ready(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.fail["/readyz"] = 503
    response = gateway.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["generator"].startswith("unavailable")


def test_readyz_is_503_when_the_retriever_is_down(
    make_gateway: Callable[..., Flask], closed_url: str
) -> None:
    response = make_gateway(retriever_url=closed_url).test_client().get("/readyz")
    error = assert_error_envelope(response, 503, "not_ready")
    assert "retriever" in error["message"]


def test_readyz_is_503_when_the_retriever_is_not_ready(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    fake_retriever.fail["/readyz"] = 503
    assert_error_envelope(gateway.get("/readyz"), 503, "not_ready")


def test_metrics_count_requests(gateway: Any) -> None:
    assert gateway.post("/v1/ask", json={"question": "Comfort+ price?"}).status_code == 200
    assert gateway.post("/v1/ask", json={}).status_code == 422
    response = gateway.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    counts = {
        (sample.labels["endpoint"], sample.labels["status"]): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
        if sample.name == "http_requests_total" and sample.labels["service"] == "gateway"
    }
    assert counts[("ask", "200")] == 1.0
    assert counts[("ask", "422")] == 1.0
    assert "http_request_duration_seconds_bucket" in response.get_data(as_text=True)


# -- OpenAPI and /docs ------------------------------------------------------------------------


def _documented_paths(app: Flask) -> set[tuple[str, str]]:
    """(method, OpenAPI path) for every API route of the app."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if not (rule.rule.startswith("/v1/") or rule.rule in ("/healthz", "/readyz")):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                routes.add((method.lower(), path))
    return routes


def test_openapi_lists_every_route_with_schemas(make_gateway: Callable[..., Flask]) -> None:
    app = make_gateway()
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["openapi"].startswith("3.")
    schemas = doc["components"]["schemas"]
    listed = {(m, p) for p, item in doc["paths"].items() for m in item}
    routes = _documented_paths(app)
    assert ("post", "/v1/ask") in routes
    assert ("delete", "/v1/documents/{document_id}") in routes
    assert routes <= listed, routes - listed
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            ok = operation["responses"]["200"]["content"]["application/json"]["schema"]
            assert ok["$ref"].split("/")[-1] in schemas, (method, path)
            if method == "post" and path == "/v1/files":
                form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
                assert form["required"] == ["file"]
                assert form["properties"]["file"]["items"]["format"] == "binary"
            elif method == "post":
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                assert body["$ref"].split("/")[-1] in schemas, (method, path)
            for status, spec in operation["responses"].items():
                if status.startswith(("4", "5")):
                    assert spec["content"]["application/json"]["schema"]["$ref"].endswith(
                        "/ErrorEnvelope"
                    )
    ask = doc["paths"]["/v1/ask"]["post"]
    assert {"401", "403", "413", "415", "422", "503", "504"} <= set(ask["responses"])
    assert "text/event-stream" in ask["responses"]["200"]["content"]
    assert ask["security"] == [{"bearer": []}]
    assert doc["paths"]["/v1/documents/{document_id}"]["delete"]["parameters"][0]["name"] == (
        "document_id"
    )
    # The request schema is the one that validates: bounds come from the pydantic model.
    question = schemas["AskRequest"]["properties"]["question"]
    assert question["maxLength"] == 2000
    assert schemas["AskRequest"]["additionalProperties"] is False


def _validator(doc: dict[str, Any], model: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"#/components/schemas/{model}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_actual_answers_and_errors_match_the_documented_schemas(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    doc = gateway.get("/openapi.json").get_json()
    answer = gateway.post("/v1/ask", json={"question": "Comfort+ price?"})
    assert answer.status_code == 200
    _validator(doc, "AskResponse").validate(answer.get_json())
    AskResponse.model_validate(answer.get_json())
    fake_generator.fail["/v1/generate"] = 500
    degraded = gateway.post("/v1/ask", json={"question": "Comfort+ price?"}).get_json()
    assert degraded["degraded"] == ["generator_error"]
    _validator(doc, "AskResponse").validate(degraded)
    error = gateway.post("/v1/ask", json={"question": ""})
    _validator(doc, "ErrorEnvelope").validate(error.get_json())
    # A wrong answer would fail: the validator is not vacuous.
    invalid = {**answer.get_json(), "mode": "guessed"}
    assert not _validator(doc, "AskResponse").is_valid(invalid)
    _validator(doc, "AskRequest").validate({"question": "hi", "top_k": 3, "stream": True})
    assert not _validator(doc, "AskRequest").is_valid({"question": "hi", "top_k": 21})


def test_docs_page_loads_only_local_assets(gateway: Any) -> None:
    for path in ("/docs", "/docs/"):
        response = gateway.get(path)
        assert response.status_code == 200
        assert response.mimetype == "text/html"
    html = gateway.get("/docs").get_data(as_text=True)
    urls = assert_local_assets(gateway, html)
    assert any(u.endswith(".js") for u in urls)
    assert any(u.endswith(".css") for u in urls)
    assert not EXTERNAL_URL.search(html), EXTERNAL_URL.search(html)
    for url in urls:
        if url.startswith("/static/"):
            # Our own scripts point Swagger UI at our own document, nowhere else.
            text = gateway.get(url).get_data(as_text=True)
            assert not EXTERNAL_URL.search(text), (url, EXTERNAL_URL.search(text))
    assert "/openapi.json" in gateway.get("/static/docs.js").get_data(as_text=True)


def test_docs_assets_cannot_escape_their_folder(gateway: Any) -> None:
    for path in ("/docs/assets/../../../gateway/app.py", "/static/../app.py"):
        assert gateway.get(path).status_code == 404


# -- the chat page ----------------------------------------------------------------------------


def test_chat_page_is_served_with_local_assets_only(gateway: Any) -> None:
    response = gateway.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'id="question"' in html
    assert 'id="conversation"' in html
    urls = assert_local_assets(gateway, html)
    assert "/static/chat.js" in urls
    assert "/static/chat.css" in urls
    for text in [html] + [gateway.get(u).get_data(as_text=True) for u in urls]:
        assert not EXTERNAL_URL.search(text), EXTERNAL_URL.search(text)
    assert assets_of(html).inline_scripts == 0


def test_unknown_static_file_is_404_in_the_envelope(gateway: Any) -> None:
    assert_error_envelope(gateway.get("/static/nope.js"), 404)


def test_uploads_need_the_admin_key_a_file_and_a_size_under_the_limit(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    import io

    client = make_gateway(admin_api_key="admin-k", max_upload_bytes=2048).test_client()
    admin = {"Authorization": "Bearer admin-k"}

    def post(data: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        return client.post(
            "/v1/files", data=data, headers=headers, content_type="multipart/form-data"
        )

    assert_error_envelope(post({"file": [(io.BytesIO(b"x"), "a.txt")]}), 401)
    error = assert_error_envelope(post({}, admin), 422)
    assert error["details"][0]["field"] == "file"
    error = assert_error_envelope(post({"file": [(io.BytesIO(b"x" * 5000), "a.txt")]}, admin), 413)
    assert "2048" in error["message"]
    assert_error_envelope(client.get("/v1/documents"), 401)
    # Refused at the gateway: nothing reached the retriever.
    assert fake_retriever.calls_to("/v1/files") == []


def test_pages_carry_a_content_security_policy_without_inline_script(gateway: Any) -> None:
    for path in ("/", "/docs"):
        response = gateway.get(path)
        assert response.status_code == 200
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self';" in policy
        assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
        assert "frame-ancestors 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
    api = gateway.get("/healthz")
    assert api.headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" not in api.headers


def test_answers_are_counted_by_mode_in_the_metrics(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    client = make_gateway().test_client()
    client.post("/v1/ask", json={"question": "What battery does the room sensor take?"})
    fake_retriever.scores = [0.05, 0.04, 0.03]  # nothing relevant: not in the documents
    client.post("/v1/ask", json={"question": "What is the capital of Mongolia?"})
    text = client.get("/metrics").get_data(as_text=True)
    counted = {
        (s.labels["mode"], s.labels["degraded"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "gateway_answers"
        for s in family.samples
        if s.name == "gateway_answers_total"
    }
    assert sum(counted.values()) == 2, counted
    assert counted.get(("no_answer", "none")) == 1, counted
