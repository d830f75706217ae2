"""GENERATOR_BACKEND=openai (the official ``openai`` SDK) against a real server: this
generator's own app serving the tiny model on 127.0.0.1, in chat and completions mode."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from generator_service.app import create_app
from tests.conftest import assert_error_envelope, serve_app

BODY = {
    "question": "How much does the Comfort+ plan cost?",
    "snippets": ["Comfort+ costs $3.49 per month, or $34 per year."],
    "max_new_tokens": 10,
}


@dataclass
class Upstream:
    url: str
    app: Flask
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def serve_upstream(tiny_config, make_generator) -> Iterator[Callable[..., Upstream]]:
    """Serve the generator app on the tiny model over HTTP; it records what it was sent."""
    with contextlib.ExitStack() as stack:

        def serve(**generator_kwargs: Any) -> Upstream:
            app = create_app(tiny_config(), generator=make_generator(**generator_kwargs))
            state = Upstream(url="", app=app)

            @app.before_request
            def record() -> None:
                state.seen.append(
                    {
                        "path": request.path,
                        "body": request.get_json(silent=True),
                        "headers": dict(request.headers),
                    }
                )

            state.url = stack.enter_context(serve_app(app))
            return state

        yield serve


@pytest.fixture
def upstream(serve_upstream) -> Upstream:
    return serve_upstream()


def backend(upstream: Upstream, tiny_config, **overrides: Any) -> FlaskClient:
    overrides.setdefault("generator_api_base", f"{upstream.url}/v1")
    config = tiny_config(
        generator_backend="openai", generator_api_model="tiny-upstream", **overrides
    )
    return create_app(config).test_client()


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def sent(upstream: Upstream, path: str) -> dict[str, Any]:
    return next(s for s in reversed(upstream.seen) if s["path"] == path)


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_answers_and_streams_through_the_real_server(upstream, tiny_config, mode: str) -> None:
    client = backend(upstream, tiny_config, generator_api_mode=mode)
    assert client.get("/readyz").status_code == 200
    assert upstream.seen[-1]["path"] == "/v1/models"

    response = client.post("/v1/generate", json=BODY)
    assert response.status_code == 200, response.get_json()
    whole = response.get_json()
    path = "/v1/chat/completions" if mode == "chat" else "/v1/completions"
    request_body = sent(upstream, path)["body"]
    assert request_body["model"] == "tiny-upstream"
    assert request_body["max_tokens"] == 10
    assert request_body["temperature"] == 0.0  # greedy
    assert "top_p" not in request_body
    assert "seed" not in request_body
    # GENERATOR_STOP's four defaults, the most the API takes.
    assert request_body["stop"] == ["Question:", "Context:", "\nUser:", "\nAssistant:"]
    if mode == "chat":
        assert [m["role"] for m in request_body["messages"]] == ["system", "user"]
        assert BODY["question"] in request_body["messages"][-1]["content"]
    else:
        assert BODY["question"] in request_body["prompt"]
    assert whole["model"] == "tiny-upstream"
    assert 1 <= whole["completion_tokens"] <= 10
    if whole["finish_reason"] == "length":
        assert whole["completion_tokens"] == 10
    # The server's own count: the backend alone would estimate ~3 characters a token.
    assert whole["prompt_tokens"] > 0

    response = client.post("/v1/generate", json={**BODY, "stream": True})
    assert response.status_code == 200
    events = parse_sse(response.get_data(as_text=True))
    assert sent(upstream, path)["body"]["stream"] is True
    assert sent(upstream, path)["body"]["stream_options"] == {"include_usage": True}
    kind, done = events[-1]
    assert kind == "done"
    tokens = [data["text"] for kind, data in events if kind == "token"]
    assert tokens
    assert "".join(tokens).strip() == done["answer"] == whole["answer"]
    for key in ("prompt_tokens", "completion_tokens", "finish_reason"):
        assert done[key] == whole[key], key


def test_completions_mode_counts_with_the_same_tokenizer(
    upstream, tiny_config, tiny_model_dir
) -> None:
    from generator_service.model import HFTokenCounter, load_model

    client = backend(
        upstream,
        tiny_config,
        generator_api_mode="completions",
        generator_tokenizer=str(tiny_model_dir),
        generator_api_base=upstream.url,  # without /v1: both spellings work
    )
    body = client.post("/v1/generate", json=BODY).get_json()
    prompt = sent(upstream, "/v1/completions")["body"]["prompt"]
    eos = "<|endoftext|>"
    assert prompt == f"{BODY['question']}{eos}{BODY['snippets'][0]}{eos}"
    counter = HFTokenCounter(load_model(str(tiny_model_dir)).tokenizer)
    assert body["prompt_tokens"] == counter.count(prompt)


def test_sampling_fields_and_request_id_are_sent(upstream, tiny_config) -> None:
    client = backend(upstream, tiny_config)
    body = {**BODY, "temperature": 0.5, "top_p": 0.8, "seed": 3}
    first = client.post("/v1/generate", json=body, headers={"X-Request-ID": "req-abc-123"})
    assert first.status_code == 200
    seen = sent(upstream, "/v1/chat/completions")
    assert (seen["body"]["temperature"], seen["body"]["top_p"], seen["body"]["seed"]) == (
        0.5,
        0.8,
        3,
    )
    assert seen["headers"]["X-Request-Id"] == "req-abc-123"
    assert "Authorization" not in seen["headers"]  # no key configured, none sent
    # The same seed samples the same answer.
    assert client.post("/v1/generate", json=body).get_json()["answer"] == first.get_json()["answer"]


def _stop_inside(text: str) -> str:
    for start in range(2, len(text) - 2):
        piece = text[start : start + 2]
        if piece.isalnum() and piece.isascii():
            return piece
    pytest.skip(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_beyond_four_are_cut_here(upstream, tiny_config, stream: bool) -> None:
    client = backend(upstream, tiny_config, generator_stop=[])
    full = client.post("/v1/generate", json=BODY).get_json()["answer"]
    stop = _stop_inside(full)
    stops = ["zq1", "zq2", "zq3", "zq4", stop]
    response = client.post("/v1/generate", json={**BODY, "stop": stops, "stream": stream})
    assert response.status_code == 200
    assert sent(upstream, "/v1/chat/completions")["body"]["stop"] == stops[:4]
    if stream:
        events = parse_sse(response.get_data(as_text=True))
        streamed = "".join(data["text"] for kind, data in events if kind == "token")
        assert stop not in streamed
        answer, reason = events[-1][1]["answer"], events[-1][1]["finish_reason"]
    else:
        answer, reason = response.get_json()["answer"], response.get_json()["finish_reason"]
    assert answer == full[: full.index(stop)].strip()
    assert reason == "stop"


def test_stop_strings_within_four_are_applied_by_the_server(upstream, tiny_config) -> None:
    client = backend(upstream, tiny_config, generator_stop=[])
    full = client.post("/v1/generate", json=BODY).get_json()["answer"]
    stop = _stop_inside(full)
    body = client.post("/v1/generate", json={**BODY, "stop": [stop]}).get_json()
    assert body["answer"] == full[: full.index(stop)].strip()
    assert body["finish_reason"] == "stop"
    # The server stopped early: fewer tokens than the answer without the stop string.
    assert body["completion_tokens"] < 10


def test_deadline_is_504_deadline_exceeded(upstream, tiny_config, forward_gate) -> None:
    client = backend(upstream, tiny_config)
    for stream in (False, True):
        response = client.post("/v1/generate", json={**BODY, "timeout_s": 0.5, "stream": stream})
        assert_error_envelope(response, 504, "deadline_exceeded")
    forward_gate.open()


def test_a_slow_server_is_504_dependency_timeout(upstream, tiny_config, forward_gate) -> None:
    client = backend(upstream, tiny_config, generator_api_timeout_s=0.5)
    response = client.post("/v1/generate", json=BODY)
    error = assert_error_envelope(response, 504, "dependency_timeout")
    assert "inference server" in error["message"]
    forward_gate.open()


def test_connection_refused_is_503(tiny_config) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tiny_config(
        generator_backend="openai", generator_api_base=f"http://127.0.0.1:{port}/v1"
    )
    client = create_app(config).test_client()
    assert_error_envelope(client.get("/readyz"), 503, "not_ready")
    for stream in (False, True):
        response = client.post("/v1/generate", json={**BODY, "stream": stream})
        assert_error_envelope(response, 503, "dependency_unavailable")


def test_upstream_queue_full_keeps_its_429(serve_upstream, tiny_config, forward_gate) -> None:
    from generator_service.batching import SamplingParams

    # A server whose only batch row is taken and which queues nothing.
    upstream = serve_upstream(max_batch_size=1, max_queue=0, retry_after_s=2)
    generator = upstream.app.extensions["generator"]
    holder = generator.engine.submit(
        [1, 2], SamplingParams(max_new_tokens=2), time.monotonic() + 60
    )
    assert forward_gate.entered.wait(10)
    response = backend(upstream, tiny_config).post("/v1/generate", json=BODY)
    error = assert_error_envelope(response, 429, "queue_full")
    assert response.headers["Retry-After"] == "2"
    assert "retry" in error["message"]
    forward_gate.open()
    holder.result()


def test_the_sdk_reads_the_routes_directly(upstream) -> None:
    import openai

    client = openai.OpenAI(api_key="unused", base_url=f"{upstream.url}/v1", max_retries=0)
    try:
        models = client.models.list()
        assert [m.id for m in models.data] == [str(upstream.app.extensions["generator"].model_name)]
        completion = client.chat.completions.create(
            model="any", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert completion.choices[0].message.role == "assistant"
        assert completion.usage is not None
        assert completion.usage.completion_tokens <= 4
        chunks = list(
            client.chat.completions.create(
                model="any",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.rstrip() == completion.choices[0].message.content
        assert chunks[-1].usage == completion.usage
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            client.chat.completions.create(model="any", messages=[], max_tokens=4)
        assert caught.value.code == "validation_error"
    finally:
        client.close()
