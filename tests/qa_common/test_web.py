"""The shared Flask plumbing, on a tiny app built with ``install_service_plumbing``."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from flask import Flask, jsonify
from pydantic import BaseModel, ConfigDict

from qa_common.errors import Conflict, DependencyUnavailable, NotFound, Overloaded, ServiceError
from qa_common.request_context import accept_request_id, get_request_id, new_request_id
from qa_common.web import install_service_plumbing, parse_body
from tests.conftest import assert_error_envelope, error_fields, serve_app


class Echo(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    count: int = 1


def build_app(*, max_in_flight: int = 4, max_body_bytes: int = 2048) -> Flask:
    app = Flask("plumbing-test")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    install_service_plumbing(app, "testsvc", max_in_flight=max_in_flight)
    app.extensions["entered"] = threading.Semaphore(0)
    app.extensions["release"] = threading.Event()

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Any:
        return jsonify(status="ready")

    @app.post("/v1/echo")
    def echo() -> Any:
        body = parse_body(Echo)
        return jsonify(name=body.name, count=body.count, request_id=get_request_id())

    @app.get("/v1/block")
    def block() -> Any:
        app.extensions["entered"].release()
        assert app.extensions["release"].wait(timeout=30), "test never released the request"
        return jsonify(done=True)

    @app.get("/v1/boom")
    def boom() -> Any:
        raise RuntimeError("secret internal detail /etc/passwd")

    @app.get("/v1/missing")
    def missing() -> Any:
        raise NotFound("no such thing")

    @app.get("/v1/conflict")
    def conflict() -> Any:
        raise Conflict(code="custom_conflict", details={"why": "because"})

    @app.get("/v1/down")
    def down() -> Any:
        raise DependencyUnavailable("chroma is down", dependency="chroma")

    return app


@pytest.fixture
def plumbing_app() -> Flask:
    return build_app()


@pytest.fixture
def plumbing_client(plumbing_app: Flask) -> Any:
    return plumbing_app.test_client()


# -- error envelope ---------------------------------------------------------------------------


def test_service_error_renders_envelope_with_status_and_request_id(plumbing_client: Any) -> None:
    response = plumbing_client.get("/v1/missing", headers={"X-Request-ID": "abc-123"})
    error = assert_error_envelope(response, 404, "not_found")
    assert error["message"] == "no such thing"
    assert error["request_id"] == "abc-123"
    assert "details" not in error


def test_error_code_and_details_pass_through(plumbing_client: Any) -> None:
    error = assert_error_envelope(plumbing_client.get("/v1/conflict"), 409, "custom_conflict")
    assert error["details"] == {"why": "because"}


def test_dependency_error_is_503(plumbing_client: Any) -> None:
    error = assert_error_envelope(plumbing_client.get("/v1/down"), 503, "dependency_unavailable")
    assert "chroma is down" in error["message"]


def test_error_to_dict_shape() -> None:
    assert ServiceError().to_dict("rid") == {
        "error": {
            "code": "internal_error",
            "message": "The service hit an unexpected error.",
            "request_id": "rid",
        }
    }
    overloaded = Overloaded(retry_after_s=0)
    assert overloaded.status == 429
    assert overloaded.headers["Retry-After"] == "1"


# -- request ids ------------------------------------------------------------------------------


def test_request_id_taken_from_header_and_echoed(plumbing_client: Any) -> None:
    response = plumbing_client.post(
        "/v1/echo", json={"name": "x"}, headers={"X-Request-ID": "req.42:a_b-c"}
    )
    assert response.status_code == 200
    assert response.get_json()["request_id"] == "req.42:a_b-c"
    assert response.headers["X-Request-ID"] == "req.42:a_b-c"


@pytest.mark.parametrize(
    "unsafe",
    ["has space", "semi;colon", "x" * 129, "line\tbreak", "<script>", "ünïcode"],
)
def test_unsafe_request_id_is_replaced(plumbing_client: Any, unsafe: str) -> None:
    response = plumbing_client.post(
        "/v1/echo", json={"name": "x"}, headers={"X-Request-ID": unsafe}
    )
    assert response.status_code == 200
    served = response.get_json()["request_id"]
    assert served != unsafe
    assert len(served) == 32
    assert all(c in "0123456789abcdef" for c in served)
    assert response.headers["X-Request-ID"] == served


def test_request_id_is_generated_when_absent(plumbing_client: Any) -> None:
    first = plumbing_client.post("/v1/echo", json={"name": "x"})
    second = plumbing_client.post("/v1/echo", json={"name": "x"})
    assert first.headers["X-Request-ID"] == first.get_json()["request_id"]
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


def test_accept_request_id_rules() -> None:
    assert accept_request_id("ok-1") == "ok-1"
    assert accept_request_id("x" * 128) == "x" * 128
    assert accept_request_id("x" * 129) != "x" * 129
    assert accept_request_id(None) != accept_request_id(None)
    assert accept_request_id("") != ""
    assert new_request_id() != new_request_id()


# -- parse_body -------------------------------------------------------------------------------


def test_parse_body_accepts_valid_json(plumbing_client: Any) -> None:
    response = plumbing_client.post("/v1/echo", json={"name": "n", "count": 3})
    assert response.status_code == 200
    assert response.get_json()["count"] == 3


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}],
)
def test_parse_body_non_json_is_415(plumbing_client: Any, headers: dict[str, str]) -> None:
    response = plumbing_client.post("/v1/echo", data='{"name": "x"}', headers=headers)
    assert_error_envelope(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("raw", ['{"name": ', "not json", "", "{'name': 'x'}"])
def test_parse_body_malformed_json_is_400(plumbing_client: Any, raw: str) -> None:
    response = plumbing_client.post("/v1/echo", data=raw, content_type="application/json")
    assert_error_envelope(response, 400, "invalid_json")


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": 5}, "name"),
        ({"name": "x", "count": "5"}, "count"),
        ({"count": 1}, "name"),
        ({"name": "x", "extra": True}, "extra"),
        ([], "body"),
        ("just a string", "body"),
    ],
)
def test_parse_body_invalid_fields_are_422_naming_them(
    plumbing_client: Any, payload: Any, field: str
) -> None:
    response = plumbing_client.post("/v1/echo", json=payload)
    error = assert_error_envelope(response, 422, "validation_error")
    assert field in error_fields(error)
    assert field in error["message"]


def test_deeply_nested_json_is_400_not_500() -> None:
    client = build_app(max_body_bytes=1_000_000).test_client()
    raw = "[" * 100_000 + "]" * 100_000
    response = client.post("/v1/echo", data=raw, content_type="application/json")
    assert_error_envelope(response, 400, "invalid_json")


def test_json_null_body_is_rejected_not_500(plumbing_client: Any) -> None:
    response = plumbing_client.post("/v1/echo", data="null", content_type="application/json")
    assert response.status_code in (400, 422)
    assert_error_envelope(response, response.status_code)


def test_body_over_limit_is_413_json(plumbing_client: Any) -> None:
    response = plumbing_client.post("/v1/echo", json={"name": "x" * 5000})
    error = assert_error_envelope(response, 413, "payload_too_large")
    assert "2048" in error["message"]


# -- routing and unexpected errors ------------------------------------------------------------


def test_unknown_route_is_json_404(plumbing_client: Any) -> None:
    assert_error_envelope(plumbing_client.get("/nope"), 404, "not_found")
    assert_error_envelope(plumbing_client.post("/v1/nothing/here", json={}), 404, "not_found")


def test_wrong_method_is_json_405(plumbing_client: Any) -> None:
    response = plumbing_client.get("/v1/echo")
    assert_error_envelope(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error_envelope(plumbing_client.delete("/healthz"), 405, "method_not_allowed")


def test_unhandled_exception_is_json_500_without_details(plumbing_client: Any) -> None:
    response = plumbing_client.get("/v1/boom")
    assert_error_envelope(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    assert "secret internal detail" not in text
    assert "RuntimeError" not in text
    assert "/etc/passwd" not in text


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_requests(plumbing_client: Any) -> None:
    plumbing_client.post("/v1/echo", json={"name": "x"})
    plumbing_client.get("/v1/missing")
    response = plumbing_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.get_data(as_text=True)
    assert "# TYPE http_requests_total counter" in text
    assert (
        'http_requests_total{endpoint="echo",method="POST",service="testsvc",status="200"} 1.0'
        in text
    )
    assert (
        'http_requests_total{endpoint="missing",method="GET",service="testsvc",status="404"} 1.0'
        in text
    )
    assert "http_request_duration_seconds_bucket" in text


def test_each_app_has_its_own_metrics_registry() -> None:
    first, second = build_app().test_client(), build_app().test_client()
    first.post("/v1/echo", json={"name": "x"})
    text = second.get("/metrics").get_data(as_text=True)
    assert 'endpoint="echo"' not in text


# -- in-flight limiter ------------------------------------------------------------------------


def test_in_flight_limit_answers_429_and_probes_stay_open() -> None:
    app = build_app(max_in_flight=2)
    entered, release = app.extensions["entered"], app.extensions["release"]
    with serve_app(app) as url, ThreadPoolExecutor(max_workers=2) as pool:
        try:
            blocked = [pool.submit(requests.get, url + "/v1/block", timeout=60) for _ in range(2)]
            for _ in range(2):
                assert entered.acquire(timeout=30), "blocking requests never started"

            shed = requests.post(url + "/v1/echo", json={"name": "x"}, timeout=10)
            error = assert_error_envelope(shed, 429, "overloaded")
            assert int(shed.headers["Retry-After"]) >= 1
            assert "2" in error["message"]

            for probe in ("/healthz", "/readyz", "/metrics"):
                assert requests.get(url + probe, timeout=10).status_code == 200, probe
            metrics = requests.get(url + "/metrics", timeout=10).text
            assert 'http_requests_shed_total{service="testsvc"} 1.0' in metrics
            assert 'http_requests_in_flight{service="testsvc"} 2.0' in metrics
        finally:
            release.set()
        assert [f.result().status_code for f in blocked] == [200, 200]

        # The slots were given back: requests are served again, including after errors.
        for _ in range(4):
            assert requests.get(url + "/v1/boom", timeout=10).status_code == 500
        assert requests.post(url + "/v1/echo", json={"name": "x"}, timeout=10).status_code == 200
        metrics = requests.get(url + "/metrics", timeout=10).text
        assert 'http_requests_in_flight{service="testsvc"} 0.0' in metrics


def test_an_internal_service_answers_only_with_the_internal_key() -> None:
    from pydantic import SecretStr

    from qa_common.config import ServiceSettings
    from qa_common.web import create_service_app

    settings = ServiceSettings(internal_api_key=SecretStr("s3cret-key"))
    app, _ = create_service_app(__name__, "internal-test", settings, internal=True)

    @app.post("/v1/work")
    def work() -> Any:
        return {"done": True}

    @app.get("/readyz")
    def readyz() -> Any:
        return {"status": "ready"}

    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
        refused = client.post("/v1/work", json={}, headers=headers)
        assert refused.status_code == 401
        assert refused.get_json()["error"]["code"] == "unauthorized"
        assert "INTERNAL_API_KEY" in refused.get_json()["error"]["message"]
    allowed = client.post("/v1/work", json={}, headers={"Authorization": "Bearer s3cret-key"})
    assert allowed.get_json() == {"done": True}
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200
    # A public service built from the same settings asks for nothing.
    public, _ = create_service_app(__name__, "public-test", settings)

    @public.post("/v1/work")
    def public_work() -> Any:
        return {"done": True}

    assert public.test_client().post("/v1/work", json={}).status_code == 200


def test_readiness_is_answered_from_a_check_repeated_in_the_background() -> None:
    import time as clock

    from qa_common.errors import NotReady
    from qa_common.web import CachedReadiness

    calls = {"n": 0, "fail": False}

    def check() -> dict[str, Any]:
        calls["n"] += 1
        if calls["fail"]:
            raise RuntimeError("the store does not answer")
        return {"store_ms": 1.0}

    readiness = CachedReadiness(check, interval_s=0.2)
    try:
        assert readiness.get()["store_ms"] == 1.0
        assert calls["n"] == 1
        for _ in range(20):  # a probe polling hard runs no check of its own
            readiness.get()
        assert calls["n"] == 1
        calls["fail"] = True
        deadline = clock.monotonic() + 10
        seen: NotReady | None = None
        while seen is None and clock.monotonic() < deadline:
            try:
                readiness.get()
                clock.sleep(0.05)
            except NotReady as exc:
                seen = exc
        assert seen is not None, "the failure was never seen"
        assert "the store does not answer" in seen.message
        calls["fail"] = False
        while clock.monotonic() < deadline:
            try:
                assert "checked_s_ago" in readiness.get()
                break
            except NotReady:
                clock.sleep(0.05)
        else:
            raise AssertionError("the recovery was never seen")
    finally:
        readiness.close()
    every_call = CachedReadiness(check, interval_s=0)
    before = calls["n"]
    every_call.get()
    every_call.get()
    assert calls["n"] == before + 2
