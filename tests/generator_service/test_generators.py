"""GENERATOR_BACKEND=openai (the ``openai`` SDK) against a small fake OpenAI-compatible server:
what a real server of this project does not do (auth, 5xx, a stream that breaks, no /models,
a server that ignores ``stop``). test_openai_backend.py runs it against the real generator."""

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
    fail_headers: dict[str, str] = field(default_factory=dict)
    # A stream that sends one piece and then an error event.
    break_stream: bool = False
    has_models: bool = True


def fake_openai(state: FakeServer) -> Flask:
    """Just enough of /v1/models, /v1/chat/completions and /v1/completions."""
    app = Flask("fake-openai")

    @app.get("/v1/models")
    def models() -> Any:
        state.seen.append(
            {
                "path": request.path,
                "auth": request.headers.get("Authorization"),
                "headers": dict(request.headers),
            }
        )
        if not state.has_models:
            return jsonify(error={"message": "no such route"}), 404
        return jsonify(object="list", data=[{"id": "fake-llm"}])

    @app.post("/v1/chat/completions")
    @app.post("/v1/completions")
    def complete() -> Any:
        body = request.get_json()
        state.seen.append(
            {
                "path": request.path,
                "body": body,
                "auth": request.headers.get("Authorization"),
                "headers": dict(request.headers),
            }
        )
        if state.fail_with:
            error = {"message": "upstream broke", "code": "upstream_code"}
            return jsonify(error=error), state.fail_with, state.fail_headers
        chat = request.path.endswith("/chat/completions")

        def choice(text: str, finish: str | None) -> dict[str, Any]:
            key = ("delta" if body.get("stream") else "message") if chat else "text"
            content = {"role": "assistant", "content": text} if chat else text
            return {"index": 0, "finish_reason": finish, key: content}

        if not body.get("stream"):
            return jsonify(id="x", choices=[choice(" " + ANSWER, "stop")], usage=USAGE)

        def events() -> Iterator[str]:
            if state.break_stream:
                yield f"data: {json.dumps({'choices': [choice(' Comfort+', None)]})}\n\n"
                yield f"data: {json.dumps({'error': {'message': 'model crashed'}})}\n\n"
                return
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


def test_upstream_error_is_502_and_not_retried(fake_server, tiny_config) -> None:
    client = make_client(fake_server, tiny_config)
    fake_server.fail_with = 500
    for stream in (False, True):
        before = len(fake_server.seen)
        response = client.post("/v1/generate", json={**BODY, "stream": stream})
        error = assert_error_envelope(response, 502, "bad_gateway")
        assert "upstream broke" in error["message"]
        assert error["details"] == {"status": 500, "code": "upstream_code"}
        # The request may have been processed: it is sent once.
        assert len(fake_server.seen) == before + 1


def test_upstream_rejections_pass_through_with_retry_after(fake_server, tiny_config) -> None:
    client = make_client(fake_server, tiny_config)
    fake_server.fail_with = 429
    fake_server.fail_headers = {"Retry-After": "7"}
    response = client.post("/v1/generate", json=BODY)
    error = assert_error_envelope(response, 429, "upstream_code")
    assert error["message"] == "upstream broke"
    assert response.headers["Retry-After"] == "7"
    assert len(fake_server.seen) == 1


def test_an_error_event_mid_stream_ends_the_stream_with_an_error(fake_server, tiny_config) -> None:
    client = make_client(fake_server, tiny_config)
    fake_server.break_stream = True
    response = client.post("/v1/generate", json={**BODY, "stream": True})
    assert response.status_code == 200
    blocks = response.get_data(as_text=True).strip().split("\n\n")
    assert blocks[0].startswith("event: token")
    kind, data = blocks[-1].split("\n")
    assert kind == "event: error"
    error = json.loads(data[len("data: ") :])["error"]
    assert error["code"] == "bad_gateway"
    assert "model crashed" in error["message"]


def test_a_server_without_models_is_still_ready(fake_server, tiny_config) -> None:
    fake_server.has_models = False
    assert make_client(fake_server, tiny_config).get("/readyz").status_code == 200


def test_no_key_sends_no_authorization_even_with_openai_api_key_set(
    fake_server, tiny_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key for api.openai.com in the environment must never reach a self-hosted server.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-for-this-server")
    monkeypatch.setenv("OPENAI_ORG_ID", "org-not-for-this-server")
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-not-for-this-server")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-not-for-this-server")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    config = tiny_config(
        generator_backend="openai", generator_api_base=fake_server.url, generator_api_model="x"
    )
    client = create_app(config).test_client()
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/generate", json=BODY).status_code == 200
    assert [s["auth"] for s in fake_server.seen] == [None, None]
    for seen in fake_server.seen:
        assert not any("openai-" in name.lower() for name in seen["headers"]), seen["headers"]


def test_stop_strings_are_cut_when_the_server_ignores_them(fake_server, tiny_config) -> None:
    client = make_client(fake_server, tiny_config)
    for stream in (False, True):
        response = client.post("/v1/generate", json={**BODY, "stop": ["$3"], "stream": stream})
        text = response.get_data(as_text=True)
        assert "$3" not in text
        assert "Comfort+ costs" in text


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
