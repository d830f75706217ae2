"""The generator's own OpenAI-compatible routes: /v1/chat/completions, /v1/completions and
/v1/models, on the tiny model (and one slow test on the real SmolLM2)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from generator_service.app import create_app
from generator_service.generators import LocalGenerator
from generator_service.openai_api import PLAIN_TURN_STOPS, chat_prompt, render_messages
from generator_service.schemas import ChatCompletionRequest
from tests.conftest import assert_error_envelope, error_fields

MESSAGES = [
    {"role": "system", "content": "Answer from the context."},
    {"role": "user", "content": "How much does the Comfort+ plan cost?"},
]
CHAT = {"messages": MESSAGES, "max_tokens": 12}


@pytest.fixture
def make_app(tiny_config, make_generator):
    """Build an app on the shared tiny model; generator keyword arguments and config overrides."""

    def make(generator_kwargs: dict[str, Any] | None = None, **overrides: Any) -> Flask:
        config = tiny_config(**overrides)
        kwargs = {
            "max_batch_size": config.generator_max_batch_size,
            "max_queue": config.generator_max_queue,
            "retry_after_s": config.generator_retry_after_s,
            **(generator_kwargs or {}),
        }
        return create_app(config, generator=make_generator(**kwargs))

    return make


@pytest.fixture
def client(make_app) -> FlaskClient:
    return make_app().test_client()


def parse_chunks(text: str) -> tuple[list[dict[str, Any]], str]:
    """Split an OpenAI stream into its JSON chunks and its last data line."""
    blocks = text.strip().split("\n\n")
    datas = []
    for block in blocks:
        assert block.startswith("data: "), block
        datas.append(block[len("data: ") :])
    return [json.loads(d) for d in datas[:-1]], datas[-1]


def chat(client: FlaskClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json={**CHAT, **body})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_chat_completion_has_the_api_shape(client: FlaskClient, tiny_model_dir) -> None:
    body = chat(client, model="whatever-the-client-says")
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert abs(body["created"] - time.time()) < 60
    assert body["model"] == str(tiny_model_dir)  # the served model, not the one asked for
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert 1 <= usage["completion_tokens"] <= 12
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if choice["finish_reason"] == "length":
        assert usage["completion_tokens"] == 12


def test_without_a_chat_template_the_turns_are_joined_by_eos(make_app, tiny_loaded) -> None:
    from generator_service.model import HFTokenCounter

    body = chat(make_app().test_client())
    eos = tiny_loaded.eos_token
    text = "".join(m["content"] + eos for m in MESSAGES)
    assert body["usage"]["prompt_tokens"] == HFTokenCounter(tiny_loaded.tokenizer).count(text)


def test_max_completion_tokens_wins_and_greedy_repeats(client: FlaskClient) -> None:
    first = chat(client, max_completion_tokens=5, max_tokens=20)
    assert first["usage"]["completion_tokens"] <= 5
    # Temperature 0 is greedy, as is sending no sampling field at all.
    again = chat(client, max_completion_tokens=5, temperature=0)
    assert again["choices"][0] == first["choices"][0]


def test_a_seed_repeats_a_sampled_answer(client: FlaskClient) -> None:
    runs = [chat(client, temperature=1.5, top_p=0.95, seed=7) for _ in range(2)]
    assert runs[0]["choices"][0] == runs[1]["choices"][0]


def test_streaming_sends_chunks_then_done(client: FlaskClient) -> None:
    whole = chat(client)
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    chunks, last = parse_chunks(response.get_data(as_text=True))
    assert last == "[DONE]"
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    # Pieces go out as written; the whole answer drops trailing whitespace.
    assert "".join(content).rstrip() == whole["choices"][0]["message"]["content"]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == whole["choices"][0]["finish_reason"]
    assert all(reason is None for reason in finish[:-1])
    # The usage chunk comes last, with no choices; every other chunk has usage null.
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == whole["usage"]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_streaming_without_include_usage_has_no_usage(client: FlaskClient) -> None:
    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    chunks, last = parse_chunks(response.get_data(as_text=True))
    assert last == "[DONE]"
    assert all("usage" not in c and c["choices"] for c in chunks)


def _stop_inside(text: str) -> str:
    """A short piece of the answer after its first characters, to use as a stop string."""
    for start in range(2, len(text) - 2):
        piece = text[start : start + 2]
        if piece.isalnum() and piece.isascii():
            return piece
    pytest.skip(f"no usable stop string in {text!r}")


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_answer(client: FlaskClient, stream: bool) -> None:
    full = chat(client)["choices"][0]["message"]["content"]
    stop = _stop_inside(full)
    expected = full[: full.index(stop)].strip()
    body = {**CHAT, "stop": ["never-written", stop], "stream": stream}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    if stream:
        chunks, _ = parse_chunks(response.get_data(as_text=True))
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        reason = chunks[-1]["choices"][0]["finish_reason"]
    else:
        choice = response.get_json()["choices"][0]
        text, reason = choice["message"]["content"], choice["finish_reason"]
    assert text.strip() == expected
    assert reason == "stop"
    # One string works as well as a list.
    single = chat(client, stop=stop)["choices"][0]["message"]["content"]
    assert single == expected


def test_the_service_stop_strings_do_not_apply(make_app) -> None:
    client = make_app().test_client()
    full = chat(client)["choices"][0]["message"]["content"]
    stop = _stop_inside(full)
    other = make_app(generator_stop=[stop]).test_client()
    assert chat(other)["choices"][0]["message"]["content"] == full


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 4}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content",
        ),
        (
            {"messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
            "messages.0.tool_calls",
        ),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**CHAT, "stop": [""]}, "stop.0"),
        ({**CHAT, "stop": 3}, "stop"),
        ({**CHAT, "temperature": 2.5}, "temperature"),
        ({**CHAT, "temperature": True}, "temperature"),
        ({**CHAT, "top_p": 0}, "top_p"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": 10_000}, "max_completion_tokens"),
        ({**CHAT, "seed": -1}, "seed"),
        ({**CHAT, "n": 2}, "n"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
        ({**CHAT, "tools": []}, "tools"),
    ],
)
def test_bad_chat_requests_are_422(client: FlaskClient, body: Any, field: str) -> None:
    error = assert_error_envelope(client.post("/v1/chat/completions", json=body), 422)
    assert field in error_fields(error), error


def test_text_parts_are_read_as_one_message(client: FlaskClient) -> None:
    parts = [{"type": "text", "text": "How much does "}, {"type": "text", "text": "Comfort+ cost?"}]
    as_parts = chat(client, messages=[{"role": "user", "content": parts}])
    as_text = chat(client, messages=[{"role": "user", "content": "How much does Comfort+ cost?"}])
    assert as_parts["choices"][0] == as_text["choices"][0]


def test_the_configured_cap_is_422(make_app) -> None:
    client = make_app(generator_max_new_tokens_cap=16, generator_max_new_tokens=8).test_client()
    error = assert_error_envelope(
        client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 17}), 422
    )
    assert error_fields(error) == {"max_tokens"}
    # Without max_tokens the configured default applies.
    assert chat(client, max_tokens=None)["usage"]["completion_tokens"] <= 8


def test_old_turns_go_first_and_a_prompt_that_cannot_fit_is_422(client: FlaskClient) -> None:
    # The tiny model's context is 256 tokens.
    long_turn = "thermostat schedule " * 150
    body = chat(
        client,
        messages=[
            MESSAGES[0],
            {"role": "user", "content": long_turn},
            {"role": "assistant", "content": "ok"},
            MESSAGES[1],
        ],
    )
    assert body["usage"]["prompt_tokens"] + 12 <= 256
    # The last message is never dropped: when it cannot fit, the request is refused.
    too_long = [MESSAGES[0], {"role": "user", "content": long_turn}]
    error = assert_error_envelope(
        client.post("/v1/chat/completions", json={**CHAT, "messages": too_long}),
        422,
        "prompt_too_long",
    )
    assert error_fields(error) == {"messages"}


def test_fallback_renderings() -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_messages(messages, chat_format=None, eos_joined=True, eos_token="<e>") == (
        "S<e>U<e>"
    )
    plain = render_messages(messages, chat_format=None, eos_joined=False, eos_token="<e>")
    assert plain == "System: S\nUser: U\nAssistant:"

    class Counter:
        def count(self, text: str) -> int:
            return len(text)

        def truncate(self, text: str, max_tokens: int) -> str:
            return text[:max_tokens]

    request = ChatCompletionRequest.model_validate({"messages": messages})
    fitted = {"counter": Counter(), "context_tokens": 100, "max_new_tokens": 10, "eos_token": "<e>"}
    prompt, stops = chat_prompt(request, chat_format=None, eos_joined=False, **fitted)
    assert (prompt.text, stops) == (plain, PLAIN_TURN_STOPS)
    prompt, stops = chat_prompt(request, chat_format=None, eos_joined=True, **fitted)
    assert (prompt.text, stops) == ("S<e>U<e>", ())
    prompt, stops = chat_prompt(
        request, chat_format=lambda m: "|".join(x["content"] for x in m), eos_joined=True, **fitted
    )
    assert (prompt.text, stops, prompt.messages) == ("S|U", (), messages)


def test_instruct_template_renders_plain_turns(make_app, tiny_loaded) -> None:
    from generator_service.model import HFTokenCounter

    body = chat(make_app(generator_prompt_template="instruct").test_client())
    text = f"System: {MESSAGES[0]['content']}\nUser: {MESSAGES[1]['content']}\nAssistant:"
    assert body["usage"]["prompt_tokens"] == HFTokenCounter(tiny_loaded.tokenizer).count(text)
    answer = body["choices"][0]["message"]["content"]
    assert not any(stop in answer for stop in PLAIN_TURN_STOPS)


def test_completions_route(client: FlaskClient, tiny_model_dir) -> None:
    response = client.post("/v1/completions", json={"prompt": "The fan runs", "max_tokens": 6})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == str(tiny_model_dir)
    [choice] = body["choices"]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] <= 6
    streamed = client.post(
        "/v1/completions",
        json={
            "prompt": "The fan runs",
            "max_tokens": 6,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    chunks, last = parse_chunks(streamed.get_data(as_text=True))
    assert last == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"}
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text.rstrip() == choice["text"]
    assert chunks[-1]["usage"] == body["usage"]


def test_completions_bad_input(client: FlaskClient) -> None:
    error = assert_error_envelope(client.post("/v1/completions", json={"max_tokens": 3}), 422)
    assert error_fields(error) == {"prompt"}
    error = assert_error_envelope(
        client.post("/v1/completions", json={"prompt": "thermostat " * 300}),
        422,
        "prompt_too_long",
    )
    assert error_fields(error) == {"prompt"}


def test_models_lists_the_served_model(client: FlaskClient, tiny_model_dir) -> None:
    body = client.get("/v1/models").get_json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [str(tiny_model_dir)]
    assert body["data"][0]["object"] == "model"


def test_model_not_loaded_is_503(tmp_path, tiny_config) -> None:
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    client = create_app(tiny_config(generator_model=str(empty))).test_client()
    assert_error_envelope(client.post("/v1/chat/completions", json=CHAT), 503, "model_not_loaded")
    assert_error_envelope(client.get("/v1/models"), 503, "model_not_loaded")


def test_full_queue_is_429(make_app, forward_gate) -> None:
    from generator_service.batching import SamplingParams

    app = make_app(generator_max_batch_size=1, generator_max_queue=0, generator_retry_after_s=5)
    generator: LocalGenerator = app.extensions["generator"]
    holder = generator.engine.submit(
        [1, 2, 3], SamplingParams(max_new_tokens=2), time.monotonic() + 60
    )
    assert forward_gate.entered.wait(10)
    response = app.test_client().post("/v1/chat/completions", json=CHAT)
    assert_error_envelope(response, 429, "queue_full")
    assert response.headers["Retry-After"] == "5"
    forward_gate.open()
    holder.result()


def test_load_is_shed_like_the_other_routes(make_app, forward_gate) -> None:
    app = make_app(max_in_flight=1)
    answered: list[int] = []
    worker = threading.Thread(
        target=lambda: answered.append(
            app.test_client().post("/v1/chat/completions", json=CHAT).status_code
        )
    )
    worker.start()
    assert forward_gate.entered.wait(10)
    response = app.test_client().post("/v1/chat/completions", json=CHAT)
    assert_error_envelope(response, 429, "overloaded")
    forward_gate.open()
    worker.join(30)
    assert answered == [200]


def test_deadline_is_504_before_any_text(make_app, forward_gate) -> None:
    client = make_app(generator_timeout_s=0.3).test_client()
    for stream in (False, True):
        response = client.post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert_error_envelope(response, 504, "deadline_exceeded")
    forward_gate.open()


# -- the real model ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_client(smollm2_dir) -> Iterator[FlaskClient]:
    from generator_service.config import load_config

    app = create_app(load_config(generator_model="smollm2-135m-instruct"))
    yield app.test_client()
    app.extensions["generator"].close()


@pytest.mark.slow
def test_smollm2_renders_its_chat_template_and_stops_at_im_end(smollm2_client) -> None:
    from generator_service.model import HFTokenCounter

    app_generator = smollm2_client.application.extensions["generator"]
    messages = [{"role": "user", "content": "Say hello in three words."}]
    body = chat(smollm2_client, messages=messages, max_tokens=64)
    rendered = app_generator.loaded.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered.endswith("<|im_start|>assistant\n")
    counter = HFTokenCounter(app_generator.loaded.tokenizer)
    assert body["usage"]["prompt_tokens"] == counter.count(rendered)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < 64
    text = choice["message"]["content"]
    assert text
    assert "<|im_end|>" not in text
    assert "<|im_start|>" not in text
