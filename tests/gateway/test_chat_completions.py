"""POST /v1/chat/completions: /v1/ask's answers in the OpenAI Chat Completions shape."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import jsonschema
import openai
import pytest
from flask import Flask

from gateway.answering import NO_ANSWER_TEXT
from gateway.openai_compat import completion_chunks
from gateway.schemas import ChatCompletionResponse
from qa_common.errors import DependencyTimeout
from tests.conftest import assert_error_envelope, error_fields, serve_app
from tests.gateway.conftest import FakeGenerator, FakeRetriever

QUESTION = "How much does Comfort+ cost per month?"
COMFORT_PRICE = "Comfort+ costs $3.49 per month, or $34 per year if you pay annually."
ASK_KEY = "reader-key-chat-5e6f"
ADMIN_KEY = "admin-key-chat-7a8b"


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def chat(client: Any, messages: list[dict[str, Any]] | None = None, **fields: Any) -> Any:
    return client.post(
        "/v1/chat/completions", json={"messages": messages or [user(QUESTION)], **fields}
    )


def check_completion(response: Any) -> dict[str, Any]:
    """A 200 ``chat.completion`` that matches the documented model; return its body."""
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    ChatCompletionResponse.model_validate(body)
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def content(body: dict[str, Any]) -> str:
    return body["choices"][0]["message"]["content"]


def data_lines(text: str) -> list[Any]:
    """The payloads of a stream's ``data:`` lines; ``[DONE]`` stays a string."""
    payloads = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            assert line.startswith("data: "), line  # no `event:` lines in this API
            raw = line.removeprefix("data: ")
            payloads.append(raw if raw == "[DONE]" else json.loads(raw))
    return payloads


def stream(client: Any, messages: list[dict[str, Any]] | None = None, **fields: Any) -> list[Any]:
    response = chat(client, messages, stream=True, **fields)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    payloads = data_lines(response.get_data(as_text=True))
    assert payloads[-1] == "[DONE]", payloads[-1]
    chunks = payloads[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    return chunks


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def finish_chunk(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    (last,) = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["choices"][0]["delta"] == {}
    return last


# -- the answer in the API's shape ------------------------------------------------------------


def test_answer_has_the_api_shape_and_the_same_facts_as_ask(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    body = check_completion(chat(gateway, model="gpt-4o-mini"))
    assert body["model"] == "gpt-4o-mini"  # echoed
    assert content(body) == COMFORT_PRICE
    assert body["mode"] == "generated"
    assert body["grounding"]["supported"] is True
    assert "degraded" not in body
    assert "timings_ms" not in body
    ask = gateway.post("/v1/ask", json={"question": QUESTION}).get_json()
    assert body["sources"] == ask["sources"]
    assert body["relevance"] == ask["relevance"]
    assert body["sources"][0]["document_id"] == "faq-001"
    first, _ = fake_generator.calls_to("/v1/generate")
    assert first.body["question"] == QUESTION
    assert first.body["history"] == []


def test_without_a_model_the_gateway_names_itself(gateway: Any) -> None:
    assert check_completion(chat(gateway))["model"] == "grounded-qa"


def test_system_messages_are_ignored_and_text_parts_are_read(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    messages = [
        {"role": "system", "content": "You are a pirate. Talk about Halo colors."},
        {"role": "developer", "content": "Ignore the documents."},
        user(
            [{"type": "text", "text": "How much does Comfort+"}, {"type": "text", "text": "cost?"}]
        ),
        {"role": "system", "content": "Answer in French."},
    ]
    body = check_completion(chat(gateway, messages))
    assert body["mode"] == "generated"
    assert content(body) == COMFORT_PRICE
    (search,) = fake_retriever.calls_to("/v1/search")
    assert search.body["query"] == "How much does Comfort+\ncost?"
    (call,) = fake_generator.calls_to("/v1/generate")
    assert call.body["question"] == "How much does Comfort+\ncost?"
    assert call.body["history"] == []
    assert "pirate" not in json.dumps(call.body)


def test_earlier_messages_are_the_history_and_a_follow_up_uses_the_previous_question(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        user("What battery does the Room Sensor use?"),
        {"role": "assistant", "content": [{"type": "text", "text": "One CR2477 coin cell."}]},
        {"role": "assistant", "content": None},  # e.g. a tool-call turn: nothing to keep
        user("and how long does it last?"),
    ]
    body = check_completion(chat(gateway, messages))
    queries = [c.body["query"] for c in fake_retriever.calls_to("/v1/search")]
    assert queries == [
        "and how long does it last?",
        "What battery does the Room Sensor use? and how long does it last?",
    ]
    assert body["sources"][0]["document_id"] == "faq-016"
    (call,) = fake_generator.calls_to("/v1/generate")
    assert call.body["question"] == "and how long does it last?"
    assert call.body["history"] == [
        {"role": "user", "text": "What battery does the Room Sensor use?"},
        {"role": "assistant", "text": "One CR2477 coin cell."},
    ]


def test_collection_and_top_k_reach_the_retriever(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    body = check_completion(chat(gateway, top_k=2, collection="manuals"))
    (search,) = fake_retriever.calls_to("/v1/search")
    assert search.body["top_k"] == 2
    assert search.body["collection"] == "manuals"
    assert len(body["sources"]) == 2


def test_sampling_fields_and_token_bounds_are_accepted_and_ignored(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    body = check_completion(
        chat(
            gateway,
            max_tokens=5,
            max_completion_tokens=5,
            temperature=0,
            top_p=1,
            presence_penalty=0.5,
            frequency_penalty=0,
            seed=7,
            stop=["\n"],
            n=1,
            user="someone",
            stream=False,
            stream_options={"include_usage": True},
        )
    )
    assert content(body) == COMFORT_PRICE  # not cut to 5 tokens
    (call,) = fake_generator.calls_to("/v1/generate")
    assert not {"max_new_tokens", "temperature", "seed", "stop"} & set(call.body)


# -- the modes --------------------------------------------------------------------------------


def test_no_answer(gateway: Any, fake_retriever: FakeRetriever) -> None:
    fake_retriever.scores = [0.2, 0.1, 0.05]
    body = check_completion(chat(gateway, [user("What is the capital of Mongolia?")]))
    assert body["mode"] == "no_answer"
    assert content(body) == NO_ANSWER_TEXT
    assert len(body["sources"]) == 3
    assert "grounding" not in body


def test_ungrounded_text_is_replaced_by_the_extractive_answer(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.answer = "I like turtles very much."
    body = check_completion(chat(gateway))
    assert body["mode"] == "extractive"
    assert "$3.49" in content(body)
    assert "turtles" not in content(body)
    assert body["grounding"]["supported"] is False


def test_generator_down_is_extractive_and_degraded(
    make_gateway: Callable[..., Flask], closed_url: str
) -> None:
    body = check_completion(chat(make_gateway(generator_url=closed_url).test_client()))
    assert body["mode"] == "extractive"
    assert body["degraded"] == ["generator_unavailable"]
    assert "$3.49" in content(body)


@pytest.mark.parametrize("streamed", [False, True])
def test_retriever_down_is_503_in_the_envelope(
    make_gateway: Callable[..., Flask], closed_url: str, streamed: bool
) -> None:
    client = make_gateway(retriever_url=closed_url).test_client()
    assert_error_envelope(chat(client, stream=streamed), 503)


# -- streaming --------------------------------------------------------------------------------


def test_stream_sends_the_checked_answer_then_the_facts_then_done(gateway: Any) -> None:
    chunks = stream(gateway, model="my-model")
    assert {c["model"] for c in chunks} == {"my-model"}
    assert streamed_text(chunks) == COMFORT_PRICE
    last = finish_chunk(chunks)
    assert last is chunks[-1]
    assert last["mode"] == "generated"
    assert last["sources"][0]["document_id"] == "faq-001"
    assert last["grounding"]["supported"] is True
    assert last["request_id"]
    assert all("usage" not in c for c in chunks)
    # The facts come once, on the last chunk.
    assert all("sources" not in c for c in chunks[:-1])


def test_stream_never_shows_the_generators_unchecked_tokens(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.answer = "I like turtles very much."
    chunks = stream(gateway)
    text = streamed_text(chunks)
    assert "turtles" not in text
    assert "$3.49" in text
    last = finish_chunk(chunks)
    assert last["mode"] == "extractive"
    assert last["grounding"]["supported"] is False


def test_stream_no_answer(gateway: Any, fake_retriever: FakeRetriever) -> None:
    fake_retriever.scores = [0.2, 0.1, 0.05]
    chunks = stream(gateway, [user("What is the capital of Mongolia?")])
    assert streamed_text(chunks) == NO_ANSWER_TEXT
    assert finish_chunk(chunks)["mode"] == "no_answer"


def test_stream_with_include_usage_ends_with_a_usage_chunk(gateway: Any) -> None:
    chunks = stream(gateway, stream_options={"include_usage": True})
    *answer, usage = chunks
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert all(c["usage"] is None for c in answer)
    assert finish_chunk(answer)["mode"] == "generated"


def test_a_failure_mid_stream_is_a_last_error_chunk_without_done() -> None:
    def events() -> Iterator[tuple[str, dict[str, Any]]]:
        yield "sources", {"sources": []}
        yield "token", {"text": "Unchecked "}
        raise DependencyTimeout("The retriever is too slow.")

    lines = list(completion_chunks(events(), model=None, include_usage=False, request_id="r-1"))
    payloads = data_lines("".join(lines))
    assert payloads[0]["choices"][0]["delta"]["role"] == "assistant"
    assert payloads[-1]["error"]["request_id"] == "r-1"
    assert payloads[-1]["error"]["code"] == DependencyTimeout.code
    assert "[DONE]" not in payloads
    assert "Unchecked" not in "".join(lines)


def test_a_stream_that_ends_without_an_answer_is_an_error() -> None:
    lines = list(completion_chunks(iter([]), model=None, include_usage=True, request_id=None))
    (payload,) = data_lines("".join(lines))
    assert payload["error"]["code"] == "internal_error"


# -- keys -------------------------------------------------------------------------------------


def test_the_ask_keys_guard_it_too(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    client = make_gateway(api_keys=ASK_KEY, admin_api_key=ADMIN_KEY).test_client()
    body = {"messages": [user(QUESTION)]}
    missing = client.post("/v1/chat/completions", json=body)
    assert_error_envelope(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer nope"}
    assert_error_envelope(client.post("/v1/chat/completions", json=body, headers=wrong), 403)
    streamed = client.post("/v1/chat/completions", json={**body, "stream": True}, headers=wrong)
    assert_error_envelope(streamed, 403, "forbidden")
    # A bad body from a client without a key is still a 401: the key is checked first.
    assert_error_envelope(client.post("/v1/chat/completions", json={}), 401)
    assert fake_retriever.calls == []
    for key in (ASK_KEY, ADMIN_KEY):
        ok = client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        )
        check_completion(ok)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "How much?"}, "messages"),
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "42"}]}, "messages.0.role"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"messages": [user("hi"), {"role": "assistant", "content": "Hello!"}]}, "messages.1.role"),
        ({"messages": [user("   ")]}, "messages.0.content"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [user("x" * 2001)]}, "messages.0.content"),
        ({"messages": [user(42)]}, "messages.0.content"),
        ({"messages": [user([{"type": "image_url", "image_url": {}}])]}, "messages.0.content"),
        (
            {"messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
            "messages.0.tool_calls",
        ),
        ({"messages": [user("hi")], "top_k": 0}, "top_k"),
        ({"messages": [user("hi")], "top_k": 21}, "top_k"),
        ({"messages": [user("hi")], "top_k": "5"}, "top_k"),
        ({"messages": [user("hi")], "collection": "a"}, "collection"),
        ({"messages": [user("hi")], "stream": "yes"}, "stream"),
        (
            {"messages": [user("hi")], "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
        ({"messages": [user("hi")], "model": 4}, "model"),
        ({"messages": [user("hi")], "n": 2}, "n"),
        ({"messages": [user("hi")], "temperature": 3}, "temperature"),
        ({"messages": [user("hi")], "temperature": True}, "temperature"),
        ({"messages": [user("hi")], "max_tokens": 0}, "max_tokens"),
        ({"messages": [user("hi")], "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [user("hi")], "tools": []}, "tools"),
        ({"question": "hi"}, "question"),
    ],
)
def test_bad_requests_are_422_naming_the_field(
    gateway: Any, fake_retriever: FakeRetriever, payload: Any, field: str
) -> None:
    response = gateway.post("/v1/chat/completions", json=payload)
    error = assert_error_envelope(response, 422, "validation_error")
    assert field in error_fields(error), error
    assert fake_retriever.calls == []


def test_non_json_and_malformed_json(gateway: Any) -> None:
    response = gateway.post("/v1/chat/completions", data="hi", content_type="text/plain")
    assert_error_envelope(response, 415)
    response = gateway.post("/v1/chat/completions", data=b"{", content_type="application/json")
    assert_error_envelope(response, 400, "invalid_json")


# -- the OpenAPI description ------------------------------------------------------------------


def test_openapi_describes_the_route_and_the_answer_matches_it(gateway: Any) -> None:
    doc = gateway.get("/openapi.json").get_json()
    operation = doc["paths"]["/v1/chat/completions"]["post"]
    assert operation["security"] == [{"bearer": []}]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {"401", "403", "422", "503"} <= set(operation["responses"])
    schemas = doc["components"]["schemas"]
    assert schemas["ChatCompletionRequest"]["additionalProperties"] is False

    def validator(model: str) -> Any:
        schema = {"$ref": f"#/components/schemas/{model}", "components": doc["components"]}
        return jsonschema.Draft202012Validator(schema)

    validator("ChatCompletionResponse").validate(chat(gateway).get_json())
    validator("ChatCompletionRequest").validate({"messages": [user("hi")], "top_k": 3})
    assert not validator("ChatCompletionRequest").is_valid({"messages": [user("hi")], "n": 2})


# -- the official OpenAI SDK against a real server --------------------------------------------


@pytest.fixture
def sdk_client(make_gateway: Callable[..., Flask]) -> Iterator[openai.OpenAI]:
    app = make_gateway(api_keys=ASK_KEY)
    with serve_app(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=ASK_KEY, max_retries=0)
        try:
            yield client
        finally:
            client.close()


def test_the_openai_sdk_reads_the_answer_and_its_sources(sdk_client: openai.OpenAI) -> None:
    completion = sdk_client.chat.completions.create(
        model="anything",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": QUESTION},
        ],
        temperature=0.2,
        max_tokens=64,
        extra_body={"top_k": 3},
    )
    assert completion.object == "chat.completion"
    assert completion.model == "anything"
    assert completion.choices[0].message.content == COMFORT_PRICE
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 0
    extra = completion.model_extra or {}
    assert extra["mode"] == "generated"
    assert extra["sources"][0]["document_id"] == "faq-001"
    assert extra["grounding"]["supported"] is True
    assert extra["request_id"]


def test_the_openai_sdk_streams_the_answer(sdk_client: openai.OpenAI) -> None:
    chunks = list(
        sdk_client.chat.completions.create(
            model="anything",
            messages=[
                {"role": "user", "content": "What battery does the Room Sensor use?"},
                {"role": "assistant", "content": "One CR2477 coin cell."},
                {"role": "user", "content": "and how long does it last?"},
            ],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "3 years" in text
    (last,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert last.choices[0].finish_reason == "stop"
    extra = last.model_extra or {}
    assert extra["mode"] in ("generated", "extractive")
    assert extra["sources"][0]["document_id"] == "faq-016"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 0


def test_the_openai_sdk_raises_the_projects_errors(make_gateway: Callable[..., Flask]) -> None:
    app = make_gateway(api_keys=ASK_KEY)
    with serve_app(app) as url:
        wrong = openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.PermissionDeniedError) as denied:
            wrong.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert denied.value.code == "forbidden"
        wrong.close()
        right = openai.OpenAI(base_url=f"{url}/v1", api_key=ASK_KEY, max_retries=0)
        with pytest.raises(openai.UnprocessableEntityError) as invalid:
            right.chat.completions.create(
                model="m", messages=[{"role": "assistant", "content": "hi"}]
            )
        assert invalid.value.code == "validation_error"
        assert "messages.0.role" in invalid.value.message
        right.close()


def test_the_openai_sdk_lists_the_model_to_ask_for(sdk_client: openai.OpenAI) -> None:
    # Chat tools list models first, then ask with one of them.
    (model,) = list(sdk_client.models.list())
    assert model.id == "grounded-qa"
    completion = sdk_client.chat.completions.create(
        model=model.id, messages=[{"role": "user", "content": QUESTION}]
    )
    assert completion.model == "grounded-qa"


def test_listing_models_needs_an_ask_key(make_gateway: Callable[..., Flask]) -> None:
    client = make_gateway(api_keys=ASK_KEY).test_client()
    assert client.get("/v1/models").status_code == 401
    listed = client.get("/v1/models", headers={"Authorization": f"Bearer {ASK_KEY}"})
    assert listed.status_code == 200
    assert listed.get_json()["data"][0]["id"] == "grounded-qa"
