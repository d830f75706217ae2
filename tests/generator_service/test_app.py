"""The HTTP API: the contract, streaming, load failure and every bad input."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from generator_service.app import create_app
from generator_service.generators import LocalGenerator
from tests.conftest import assert_error_envelope, error_fields

BODY = {
    "question": "How much does the Comfort+ plan cost?",
    "snippets": ["Comfort+ costs $3.49 per month, or $34 per year."],
}


@pytest.fixture
def make_app(tiny_config, make_generator):
    """Build an app on the shared tiny model; generator keyword arguments and config overrides."""

    def make(generator_kwargs: dict[str, Any] | None = None, **overrides: Any) -> Flask:
        config = tiny_config(**overrides)
        kwargs = {
            "max_batch_size": config.generator_max_batch_size,
            "max_queue": config.generator_max_queue,
            "retry_after_s": config.generator_retry_after_s,
            "context_tokens": config.generator_context_tokens,
            **(generator_kwargs or {}),
        }
        return create_app(config, generator=make_generator(**kwargs))

    return make


@pytest.fixture
def client(make_app) -> FlaskClient:
    return make_app().test_client()


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_generate_answers_with_the_contract_fields(client: FlaskClient) -> None:
    response = client.post(
        "/v1/generate",
        json={**BODY, "history": [{"role": "user", "text": "hi"}], "max_new_tokens": 12},
        headers={"X-Request-ID": "req-123"},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-123"
    body = response.get_json()
    assert set(body) >= {"answer", "model", "prompt_tokens", "completion_tokens", "took_ms"}
    assert isinstance(body["answer"], str)
    assert body["answer"] == body["answer"].strip()
    assert 1 <= body["completion_tokens"] <= 12
    assert body["prompt_tokens"] > 0
    assert body["model"].endswith("model")
    assert body["snippets_used"] == 1
    assert body["history_used"] == 1


def test_min_new_tokens_writes_exactly_that_many(make_app) -> None:
    # The generator benchmark compares like with like: every answer exactly N tokens long.
    client = make_app(generator_stop=[]).test_client()
    body = {**BODY, "max_new_tokens": 9, "min_new_tokens": 9}
    reply = client.post("/v1/generate", json=body).get_json()
    assert (reply["completion_tokens"], reply["finish_reason"]) == (9, "length")
    # More than max_new_tokens is held to max_new_tokens.
    capped = client.post("/v1/generate", json={**BODY, "max_new_tokens": 4, "min_new_tokens": 5})
    assert capped.status_code == 200
    assert capped.get_json()["completion_tokens"] == 4


def test_greedy_answers_are_repeatable(client: FlaskClient) -> None:
    first = client.post("/v1/generate", json=BODY).get_json()
    second = client.post("/v1/generate", json=BODY).get_json()
    assert first["answer"] == second["answer"]


def test_stream_sends_tokens_then_a_final_event(client: FlaskClient) -> None:
    plain = client.post("/v1/generate", json={**BODY, "max_new_tokens": 20}).get_json()
    response = client.post("/v1/generate", json={**BODY, "max_new_tokens": 20, "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = parse_sse(response.get_data(as_text=True))
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "done"
    assert set(kinds[:-1]) == {"token"}
    assert len(kinds) > 2
    streamed = "".join(data["text"] for kind, data in events if kind == "token")
    done = events[-1][1]
    assert streamed.strip() == done["answer"] == plain["answer"]
    assert done["completion_tokens"] == plain["completion_tokens"]
    assert done["prompt_tokens"] == plain["prompt_tokens"]
    assert {"model", "took_ms"} <= set(done)


def test_probes_and_metrics(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "ready"
    assert "forward_ms" in ready.get_json()
    client.post("/v1/generate", json=BODY)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'generator_tokens_total{kind="completion"}' in metrics
    assert "generator_queue_depth" in metrics
    assert 'http_requests_total{endpoint="generate"' in metrics or "generate" in metrics


def test_model_load_failure_starts_but_is_not_ready(tmp_path: Path, tiny_config) -> None:
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    app = create_app(tiny_config(generator_model=str(empty)))
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    error = assert_error_envelope(client.get("/readyz"), 503, "not_ready")
    assert "not loaded" in error["message"]
    assert str(empty) in error["message"]
    assert_error_envelope(client.post("/v1/generate", json=BODY), 503, "model_not_loaded")


def test_unknown_hub_model_offline_is_a_503(monkeypatch: pytest.MonkeyPatch, tiny_config) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    app = create_app(tiny_config(generator_model="no-such-org/no-such-model"))
    assert_error_envelope(app.test_client().get("/readyz"), 503)


def test_int8_and_bf16_load_through_the_same_path(tiny_config) -> None:
    for dtype in ("int8", "bfloat16"):
        app = create_app(tiny_config(generator_dtype=dtype))
        try:
            client = app.test_client()
            assert client.get("/readyz").status_code == 200
            body = client.post("/v1/generate", json={**BODY, "max_new_tokens": 4}).get_json()
            assert body["completion_tokens"] == 4
        finally:
            app.extensions["generator"].close()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"snippets": []}, "question"),
        ({"question": "", "snippets": []}, "question"),
        ({"question": "   ", "snippets": []}, "question"),
        ({"question": 42, "snippets": []}, "question"),
        ({"question": "q"}, "snippets"),
        ({"question": "q", "snippets": "one snippet"}, "snippets"),
        ({"question": "q", "snippets": [1]}, "snippets.0"),
        (
            {"question": "q", "snippets": [], "history": [{"role": "bot", "text": "x"}]},
            "history.0.role",
        ),
        ({"question": "q", "snippets": [], "history": [{"role": "user"}]}, "history.0.text"),
        ({"question": "q", "snippets": [], "history": "hi"}, "history"),
        ({"question": "q", "snippets": [], "max_new_tokens": 0}, "max_new_tokens"),
        ({"question": "q", "snippets": [], "max_new_tokens": 257}, "max_new_tokens"),
        ({"question": "q", "snippets": [], "max_new_tokens": "5"}, "max_new_tokens"),
        ({"question": "q", "snippets": [], "max_new_tokens": 2.5}, "max_new_tokens"),
        ({"question": "q", "snippets": [], "temperature": 0}, "temperature"),
        ({"question": "q", "snippets": [], "temperature": 2.5}, "temperature"),
        ({"question": "q", "snippets": [], "temperature": True}, "temperature"),
        ({"question": "q", "snippets": [], "top_p": 0}, "top_p"),
        ({"question": "q", "snippets": [], "top_p": 1.5}, "top_p"),
        ({"question": "q", "snippets": [], "stream": "yes"}, "stream"),
        ({"question": "q", "snippets": [], "unknown": 1}, "unknown"),
        ([], "body"),
    ],
)
def test_invalid_fields_are_422(client: FlaskClient, body: Any, field: str) -> None:
    error = assert_error_envelope(client.post("/v1/generate", json=body), 422, "validation_error")
    assert field in error_fields(error)


def test_limits_from_config_are_422(make_app) -> None:
    client = make_app(
        max_question_chars=10, generator_max_new_tokens_cap=16, generator_max_new_tokens=8
    ).test_client()
    error = assert_error_envelope(
        client.post("/v1/generate", json={"question": "x" * 11, "snippets": []}), 422
    )
    assert error["details"][0]["field"] == "question"
    error = assert_error_envelope(
        client.post("/v1/generate", json={"question": "q", "snippets": [], "max_new_tokens": 17}),
        422,
    )
    assert error["details"][0]["field"] == "max_new_tokens"


def test_question_too_long_for_the_context_is_422(make_app) -> None:
    client = make_app().test_client()
    question = "thermostat " * 300
    error = assert_error_envelope(
        client.post("/v1/generate", json={"question": question, "snippets": []}),
        422,
        "prompt_too_long",
    )
    assert error["details"][0]["field"] == "question"


def test_long_snippets_are_trimmed_not_refused(client: FlaskClient) -> None:
    snippets = ["Comfort+ costs $3.49 per month. " * 30, "The fan runs on a schedule. " * 30]
    body = client.post(
        "/v1/generate", json={"question": "Price?", "snippets": snippets, "max_new_tokens": 64}
    ).get_json()
    assert body["prompt_tokens"] + 64 <= 256
    assert body["snippets_dropped"] >= 1


@pytest.mark.parametrize(
    ("data", "content_type"),
    [("question=q", "application/x-www-form-urlencoded"), ("{}", "text/plain"), ("{}", None)],
)
def test_non_json_is_415(client: FlaskClient, data: str, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    assert_error_envelope(client.post("/v1/generate", data=data, headers=headers), 415)


def test_broken_json_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/v1/generate", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert_error_envelope(response, 400, "invalid_json")


def test_oversized_body_is_413(make_app) -> None:
    client = make_app(max_body_bytes=2048).test_client()
    response = client.post("/v1/generate", json={"question": "q", "snippets": ["x" * 4096]})
    assert_error_envelope(response, 413, "payload_too_large")


def test_full_queue_is_429_with_retry_after(make_app, forward_gate) -> None:
    app = make_app(generator_max_batch_size=1, generator_max_queue=0, generator_retry_after_s=5)
    generator: LocalGenerator = app.extensions["generator"]
    # Hold the only row with a request made directly on the engine.
    holder = generator.engine.submit([1, 2, 3], _params(), time.monotonic() + 60)
    assert forward_gate.entered.wait(10)
    response = app.test_client().post("/v1/generate", json=BODY)
    error = assert_error_envelope(response, 429, "queue_full")
    assert response.headers["Retry-After"] == "5"
    assert "retry" in error["message"]
    forward_gate.open()
    holder.result()


def test_deadline_is_504(make_app, forward_gate) -> None:
    client = make_app().test_client()
    response = client.post("/v1/generate", json={**BODY, "timeout_s": 0.2})
    assert_error_envelope(response, 504, "deadline_exceeded")
    forward_gate.open()


def test_deadline_applies_to_streams_too(make_app, forward_gate) -> None:
    client = make_app().test_client()
    response = client.post("/v1/generate", json={**BODY, "timeout_s": 0.2, "stream": True})
    assert_error_envelope(response, 504, "deadline_exceeded")
    forward_gate.open()


def test_deadline_mid_stream_ends_with_an_error_event(make_app, tiny_loaded) -> None:
    release = threading.Event()
    forwards = itertools.count()

    def stall_after_ten(_module: Any, _args: Any) -> None:
        if next(forwards) >= 10:
            release.wait(timeout=30)

    hook = tiny_loaded.model.register_forward_pre_hook(stall_after_ten)
    try:
        client = make_app().test_client()
        response = client.post(
            "/v1/generate", json={**BODY, "timeout_s": 0.5, "stream": True, "max_new_tokens": 64}
        )
        assert response.status_code == 200
        events = parse_sse(response.get_data(as_text=True))
    finally:
        release.set()
        hook.remove()
    assert {kind for kind, _ in events[:-1]} == {"token"}
    kind, data = events[-1]
    assert kind == "error"
    assert data["error"]["code"] == "deadline_exceeded"
    assert data["error"]["request_id"] == response.headers["X-Request-ID"]


def test_unknown_route_and_method_are_json(client: FlaskClient) -> None:
    assert_error_envelope(client.get("/v1/nothing"), 404)
    assert_error_envelope(client.get("/v1/generate"), 405)


def _params():
    from generator_service.batching import SamplingParams

    return SamplingParams(max_new_tokens=2)
