"""POST /v1/ask with ``stream: true``: sources, checked sentences of the generated text, done.

Text reaches the client only once the grounding check has passed it, one finished sentence at a
time: a sentence that fails stops the stream's text, and ``done`` brings the extractive answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from gateway.answering import NO_ANSWER_TEXT
from gateway.schemas import AskResponse
from tests.gateway.conftest import FakeGenerator, FakeRetriever, parse_events

QUESTION = "How much does Comfort+ cost per month?"


def stream(client: Any, question: str = QUESTION, **fields: Any) -> list[tuple[str, Any]]:
    response = client.post(
        "/v1/ask",
        json={"question": question, "stream": True, **fields},
        headers={"X-Request-ID": "stream-1"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Request-ID"] == "stream-1"
    events = parse_events(response.get_data(as_text=True))
    assert events, "no events"
    assert events[0][0] == "sources"
    assert events[-1][0] == "done", events
    assert [name for name, _ in events].count("done") == 1
    done = events[-1][1]
    AskResponse.model_validate(done)
    assert done["request_id"] == "stream-1"
    assert done["sources"] == events[0][1]["sources"]
    return events


def tokens(events: list[tuple[str, Any]]) -> list[str]:
    return [data["text"] for name, data in events if name == "token"]


def test_stream_relays_tokens_then_done_with_mode_and_sources(
    gateway: Any, fake_generator: FakeGenerator, fake_retriever: FakeRetriever
) -> None:
    events = stream(gateway)
    names = [name for name, _ in events]
    assert names[0] == "sources"
    assert names[-1] == "done"
    assert set(names[1:-1]) == {"token"}
    done = events[-1][1]
    assert "".join(tokens(events)) == done["answer"]
    assert done["mode"] == "generated"
    assert done["answer"] == "Comfort+ costs $3.49 per month, or $34 per year if you pay annually."
    assert done["sources"][0]["document_id"] == "faq-001"
    assert "degraded" not in done
    (call,) = fake_generator.calls_to("/v1/generate")
    assert call.body["stream"] is True
    assert call.headers["X-Request-Id"] == "stream-1"
    assert {c.headers["X-Request-Id"] for c in fake_retriever.calls} == {"stream-1"}


def test_stream_of_ungrounded_tokens_ends_extractive(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.answer = "I like turtles very much."
    events = stream(gateway)
    # Never shown: it was not supported.
    assert tokens(events) == []
    done = events[-1][1]
    assert done["mode"] == "extractive"
    assert "$3.49" in done["answer"]
    assert done["grounding"]["supported"] is False


def test_stream_with_generator_down_ends_extractive_without_tokens(
    make_gateway: Callable[..., Flask], closed_url: str
) -> None:
    events = stream(make_gateway(generator_url=closed_url).test_client())
    assert [name for name, _ in events] == ["sources", "done"]
    done = events[-1][1]
    assert done["mode"] == "extractive"
    assert done["degraded"] == ["generator_unavailable"]
    assert "$3.49" in done["answer"]


def test_stream_error_event_mid_stream_ends_extractive(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.stream_error_after = 2
    events = stream(gateway)
    # Two words are no finished sentence: nothing was checked, so nothing was shown.
    assert tokens(events) == []
    assert "error" not in [name for name, _ in events]
    done = events[-1][1]
    assert done["mode"] == "extractive"
    assert done["degraded"] == ["generator_error"]
    assert "$3.49" in done["answer"]


def test_stream_with_generator_overloaded_ends_extractive(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.fail["/v1/generate"] = 429
    events = stream(gateway)
    assert tokens(events) == []
    assert events[-1][1]["degraded"] == ["generator_overloaded"]
    assert events[-1][1]["mode"] == "extractive"


def test_stream_with_generator_slow_to_start_ends_extractive(
    make_gateway: Callable[..., Flask], fake_generator: FakeGenerator
) -> None:
    fake_generator.delay_s["/v1/generate"] = 10
    events = stream(make_gateway(generator_read_timeout_s=0.3).test_client())
    assert tokens(events) == []
    assert events[-1][1]["degraded"] == ["generator_timeout"]
    assert events[-1][1]["mode"] == "extractive"


def test_stream_with_generator_stalling_mid_stream_ends_extractive(
    make_gateway: Callable[..., Flask], fake_generator: FakeGenerator
) -> None:
    # The generator sends two tokens, then nothing: past the read timeout the gateway must
    # still finish with the extractive answer, as it does for every other generator failure.
    fake_generator.stream_stall_after = 2
    events = stream(make_gateway(generator_read_timeout_s=0.5).test_client())
    assert tokens(events) == []
    assert "error" not in [name for name, _ in events]
    done = events[-1][1]
    assert done["mode"] == "extractive"
    assert done["degraded"] == ["generator_timeout"]
    assert "$3.49" in done["answer"]


def test_stream_broken_off_mid_stream_ends_extractive(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.stream_abort_after = 3
    events = stream(gateway)
    assert tokens(events) == []
    done = events[-1][1]
    assert done["mode"] == "extractive"
    assert done["degraded"] == ["generator_error"]
    assert "$3.49" in done["answer"]


def test_stream_no_answer_sends_sources_and_done_only(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    fake_retriever.scores = [0.1, 0.05, 0.01]
    events = stream(gateway, "What is the capital of Mongolia?")
    assert [name for name, _ in events] == ["sources", "done"]
    assert [s["score"] for s in events[0][1]["sources"]] == [0.1, 0.05, 0.01]
    assert events[-1][1]["mode"] == "no_answer"
    assert events[-1][1]["answer"] == NO_ANSWER_TEXT
    assert fake_generator.calls_to("/v1/generate") == []


def test_stream_passes_history_and_searches_the_follow_up(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    history = [
        {"role": "user", "text": "What battery does the Room Sensor use?"},
        {"role": "assistant", "text": "One CR2477 coin cell."},
    ]
    events = stream(gateway, "how long does it last?", history=history)
    assert events[-1][1]["sources"][0]["document_id"] == "faq-016"
    queries = [c.body["query"] for c in fake_retriever.calls_to("/v1/search")]
    assert queries[-1] == "What battery does the Room Sensor use? how long does it last?"
    (call,) = fake_generator.calls_to("/v1/generate")
    assert call.body["history"] == history


def test_stream_shows_each_sentence_once_it_is_checked(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    first = "Comfort+ costs $3.49 per month, or $34 per year if you pay annually."
    second = "Paying yearly works out to roughly 19% less than twelve monthly payments."
    fake_generator.answer = f"{first} {second}"
    events = stream(gateway)
    assert tokens(events) == [f"{first} ", second]
    assert events[-1][1]["mode"] == "generated"
    assert "".join(tokens(events)) == events[-1][1]["answer"]


def test_stream_stops_showing_text_at_the_first_unsupported_sentence(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    first = "Comfort+ costs $3.49 per month, or $34 per year if you pay annually."
    wrong = "It also costs $99 to cancel."
    fake_generator.answer = f"{first} {wrong} Call us at 555-0199 to sign up today."
    events = stream(gateway)
    shown = "".join(tokens(events))
    # The supported sentence was shown; the wrong one and everything after it never were.
    assert shown == f"{first} "
    done = events[-1][1]
    assert done["mode"] == "extractive"
    assert done["grounding"]["supported"] is False
    assert "$99" not in done["answer"]
