"""POST /v1/context (retrieval as /v1/ask does it, no answer) and a generator that declines."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from gateway.schemas import AskResponse, ContextResponse
from qa_common.answer_texts import DECLINE_TEXT, NO_ANSWER_TEXT
from tests.conftest import DATA_DIR, assert_error_envelope
from tests.gateway.conftest import (
    FakeGenerator,
    FakeRetriever,
    LiveStack,
    parse_events,
)

QUESTION = "How much does Comfort+ cost per month?"


def test_context_is_what_ask_would_send_the_generator(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    response = gateway.post("/v1/context", json={"question": QUESTION})
    assert response.status_code == 200, response.get_data(as_text=True)
    found = response.get_json()
    ContextResponse.model_validate(found)
    assert found["answerable"] is True
    assert found["decline_text"] == DECLINE_TEXT
    assert found["no_answer_text"] == NO_ANSWER_TEXT
    assert fake_generator.calls_to("/v1/generate") == []  # nothing was generated

    gateway.post("/v1/ask", json={"question": QUESTION})
    (call,) = fake_generator.calls_to("/v1/generate")
    sent = {k: v for k, v in call.body.items() if k != "stream"}
    assert found["generation"] == sent
    assert found["generation"]["snippets"] == [s["text"] for s in found["sources"][:3]]


def test_context_follows_a_follow_up_like_ask(gateway: Any) -> None:
    history = [
        {"role": "user", "text": QUESTION},
        {"role": "assistant", "text": "It costs $3.49 per month."},
    ]
    found = gateway.post(
        "/v1/context", json={"question": "and per year?", "history": history}
    ).get_json()
    assert found["generation"]["history"] == history
    assert found["generation"]["question"] == "and per year?"


def test_context_says_when_the_gate_would_refuse(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    fake_retriever.scores = [0.2, 0.1, 0.05]
    found = gateway.post(
        "/v1/context", json={"question": "What is the capital of Mongolia?"}
    ).get_json()
    assert found["answerable"] is False
    assert found["relevance"] < 0.52


def test_context_rejects_bad_input_and_needs_the_ask_key(
    make_gateway: Callable[..., Flask],
) -> None:
    client = make_gateway(api_keys="k1").test_client()
    assert_error_envelope(client.post("/v1/context", json={"question": QUESTION}), 401)
    headers = {"Authorization": "Bearer k1"}
    response = client.post("/v1/context", json={"question": " "}, headers=headers)
    assert_error_envelope(response, 422)
    streamed = {"question": QUESTION, "stream": True}
    assert_error_envelope(client.post("/v1/context", json=streamed, headers=headers), 422)
    response = client.post("/v1/context", json={"question": QUESTION}, headers=headers)
    assert response.status_code == 200


def test_context_is_in_the_openapi_description(gateway: Any) -> None:
    paths = gateway.get("/openapi.json").get_json()["paths"]
    assert "post" in paths["/v1/context"]


def test_a_generated_decline_is_a_no_answer(gateway: Any, fake_generator: FakeGenerator) -> None:
    fake_generator.answer = DECLINE_TEXT
    body = gateway.post("/v1/ask", json={"question": QUESTION}).get_json()
    AskResponse.model_validate(body)
    assert body["mode"] == "no_answer"
    assert body["answer"] == NO_ANSWER_TEXT
    assert body["grounding"]["reason"] == "declined"
    assert body["sources"]


def test_a_streamed_decline_shows_no_text_and_ends_as_no_answer(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.answer = DECLINE_TEXT
    response = gateway.post("/v1/ask", json={"question": QUESTION, "stream": True})
    events = parse_events(response.get_data(as_text=True))
    assert [name for name, _ in events if name == "token"] == []
    assert events[-1][0] == "done"
    assert events[-1][1]["mode"] == "no_answer"
    assert events[-1][1]["grounding"]["reason"] == "declined"


def test_declines_can_be_ignored(
    make_gateway: Callable[..., Flask], fake_generator: FakeGenerator
) -> None:
    fake_generator.answer = DECLINE_TEXT
    client = make_gateway(honor_generator_decline=False).test_client()
    body = client.post("/v1/ask", json={"question": QUESTION}).get_json()
    assert body["mode"] == "extractive"


@pytest.mark.slow
def test_fine_tuning_takes_its_snippets_from_the_running_gateway(
    live_stack: LiveStack, gateway_tiny_model_dir: Path, tmp_path: Path
) -> None:
    from generator_service.finetune.cli import main
    from generator_service.finetune.contexts import GatewayContextClient, ground_records
    from generator_service.finetune.data import read_file

    records = read_file(DATA_DIR / "faq.csv")[:5]
    client = GatewayContextClient(live_stack.url)
    try:
        grounded = ground_records(records, client)
    finally:
        client.close()
    for item in grounded:
        asked = requests.post(
            f"{live_stack.url}/v1/ask", json={"question": item.record.question}, timeout=60
        ).json()
        assert item.origin == "gateway"
        assert list(item.snippets) == [s["text"] for s in asked["sources"][:3]]
        assert item.documents == {s["document_id"] for s in asked["sources"]}

    out = tmp_path / "model"
    argv = ["--data", str(DATA_DIR / "faq.csv"), "--out", str(out)]
    argv += ["--gateway", live_stack.url, "--base", str(gateway_tiny_model_dir)]
    assert main([*argv, "--steps", "2", "--eval-share", "0", "--no-progress"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["examples"]["snippets_from"] == ["gateway"]
    assert record["examples"]["answer"] == len(read_file(DATA_DIR / "faq.csv"))
    assert record["examples"]["refusal"] > 0
