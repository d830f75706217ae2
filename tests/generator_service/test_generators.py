"""GENERATOR_BACKEND=openai against a small OpenAI-compatible server run by the test."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request
from flask.testing import FlaskClient

from generator_service.app import create_app
from tests.conftest import assert_error_envelope, serve_app

ANSWER = "Comfort+ costs $3.49 per month."
BODY = {
    "question": "How much does Comfort+ cost?",
    "snippets": ["Comfort+ costs $3.49 per month, or $34 per year."],
    "history": [{"role": "user", "text": "hi"}, {"role": "assistant", "text": "hello"}],
}
USAGE = {"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49}


@dataclass
class FakeServer:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)
    fail_with: int | None = None


def fake_openai(state: FakeServer) -> Flask:
    """Just enough of /v1/models, /v1/chat/completions and /v1/completions."""
    app = Flask("fake-openai")

    @app.get("/v1/models")
    def models() -> Any:
        return jsonify(object="list", data=[{"id": "fake-llm"}])

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    def complete() -> Any:
        body = request.get_json()
        state.seen.append(
            {"path": request.path, "body": body, "auth": request.headers.get("Authorization")}
        )
        if state.fail_with:
            return jsonify(error={"message": "upstream broke"}), state.fail_with
        chat = request.path.endswith("/chat/completions")

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            key = ("delta" if body.get("stream") else "message") if chat else "text"
            content = {"role": "assistant", "content": text} if chat else text
            return {"index": 0, "finish_reason": finish, key: content}

        if not body.get("stream"):
            return jsonify(id="x", choices=[choice(" " + ANSWER, "stop")], usage=USAGE)

        def events() -> Iterator[str]:
            for word in ANSWER.split(" "):
                yield f"data: {json.dumps({'choices': [choice(' ' + word, None)]})}\n\n"
            yield f"data: {json.dumps({'choices': [], 'usage': USAGE})}\n\ndata: [DONE]\n\n"

        return Response(events(), mimetype="text/event-stream")

    return app


@pytest.fixture
def fake_server() -> Iterator[FakeServer]:
    state = FakeServer(url="")
    with serve_app(fake_openai(state)) as url:
        state.url = url
        yield state


def make_client(server: FakeServer, tiny_config, **overrides: Any) -> FlaskClient:
    overrides.setdefault("generator_api_base", f"{server.url}/v1")
    config = tiny_config(
        generator_backend="openai",
        generator_api_key="sk-test",
        generator_api_model="fake-llm",
        **overrides,
    )
    return create_app(config).test_client()


def test_chat_completions(fake_server, tiny_config) -> None:
    client = make_client(fake_server, tiny_config)
    assert client.get("/readyz").status_code == 200
    response = client.post("/v1/generate", json=BODY)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["answer"] == ANSWER
    assert (body["model"], body["prompt_tokens"], body["completion_tokens"]) == ("fake-llm", 42, 7)
    sent = fake_server.seen[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["auth"] == "Bearer sk-test"
    assert sent["body"]["model"] == "fake-llm"
    assert sent["body"]["temperature"] == 0.0  # greedy
    assert sent["body"]["max_tokens"] == 64
    messages = sent["body"]["messages"]
    assert messages[0]["role"] == "system"
    assert BODY["snippets"][0] in messages[0]["content"]
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "user"]
    assert messages[-1]["content"] == BODY["question"]


def test_completions_send_the_built_prompt(fake_server, tiny_config, tiny_model_dir) -> None:
    client = make_client(
        fake_server,
        tiny_config,
        generator_api_mode="completions",
        generator_tokenizer=str(tiny_model_dir),
        generator_api_base=fake_server.url,  # without /v1: both spellings work
    )
    body = client.post(
        "/v1/generate", json={**BODY, "max_new_tokens": 9, "temperature": 0.5}
    ).get_json()
    assert body["answer"] == ANSWER
    sent = fake_server.seen[-1]
    assert sent["path"] == "/v1/completions"
    eos = "<|endoftext|>"
    assert sent["body"]["prompt"] == (
        f"hi{eos}hello{eos}{BODY['question']}{eos}{BODY['snippets'][0]}{eos}"
    )
    assert sent["body"]["max_tokens"] == 9
    assert sent["body"]["temperature"] == 0.5
    assert "top_p" in sent["body"]


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_streaming_relays_pieces(fake_server, tiny_config, mode: str) -> None:
    client = make_client(fake_server, tiny_config, generator_api_mode=mode)
    response = client.post("/v1/generate", json={**BODY, "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = [
        (block.split("\n")[0][len("event: ") :], json.loads(block.split("\n")[1][len("data: ") :]))
        for block in response.get_data(as_text=True).strip().split("\n\n")
    ]
    assert events[-1][0] == "done"
    tokens = [data["text"] for kind, data in events if kind == "token"]
    assert len(tokens) > 2
    assert "".join(tokens).strip() == events[-1][1]["answer"] == ANSWER
    assert events[-1][1]["completion_tokens"] == 7
    assert fake_server.seen[-1]["body"]["stream"] is True


def test_upstream_error_is_502(fake_server, tiny_config) -> None:
    client = make_client(fake_server, tiny_config)
    fake_server.fail_with = 500
    assert_error_envelope(client.post("/v1/generate", json=BODY), 502, "bad_gateway")


def test_upstream_down_is_503(tiny_config) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = tiny_config(
        generator_backend="openai", generator_api_base=f"http://127.0.0.1:{port}/v1"
    )
    client = create_app(config).test_client()
    assert_error_envelope(client.get("/readyz"), 503, "not_ready")
    assert_error_envelope(client.post("/v1/generate", json=BODY), 503, "dependency_unavailable")


def test_openai_backend_needs_an_api_base(tiny_config) -> None:
    from qa_common.config import ConfigError

    with pytest.raises(ConfigError, match="GENERATOR_API_BASE"):
        tiny_config(generator_backend="openai")
