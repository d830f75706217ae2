"""POST /v1/ask against fake downstreams: every answering mode, every degraded path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from gateway.answering import NO_ANSWER_TEXT
from gateway.schemas import AskResponse
from tests.conftest import assert_error_envelope
from tests.gateway.conftest import CORPUS, FakeGenerator, FakeRetriever

QUESTION = "How much does Comfort+ cost per month?"
COMFORT_PRICE = "Comfort+ costs $3.49 per month, or $34 per year if you pay annually."


def ask(client: Any, question: str = QUESTION, **fields: Any) -> Any:
    return client.post("/v1/ask", json={"question": question, **fields})


def check_answer(response: Any) -> dict[str, Any]:
    """A 200 answer that matches the AskResponse model; return its body."""
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    AskResponse.model_validate(body)
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


# -- the three modes --------------------------------------------------------------------------


def test_grounded_generated_answer_is_returned(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    body = check_answer(ask(gateway))
    assert body["mode"] == "generated"
    assert body["answer"] == COMFORT_PRICE
    assert "degraded" not in body
    assert body["grounding"]["supported"] is True
    assert body["grounding"]["reason"] is None
    assert body["grounding"]["overlap"] >= 0.6
    assert body["grounding"]["similarity"] >= 0.5
    assert body["sources"][0]["document_id"] == "faq-001"
    assert [s["score"] for s in body["sources"]] == [0.8, 0.6, 0.5]
    assert {"retrieve", "generate", "ground", "total"} <= set(body["timings_ms"])
    # The generator was given the question and the top snippets (CONTEXT_SNIPPETS = 3).
    (call,) = fake_generator.calls_to("/v1/generate")
    assert call.body["question"] == QUESTION
    assert call.body["snippets"] == [s["text"] for s in body["sources"][:3]]
    assert call.body["history"] == []
    assert call.body["stream"] is False


def test_ungrounded_generated_text_falls_back_to_extractive(
    gateway: Any, fake_generator: FakeGenerator
) -> None:
    fake_generator.answer = "I like turtles very much."
    body = check_answer(ask(gateway))
    assert body["mode"] == "extractive"
    assert "turtle" not in body["answer"]
    assert "$3.49" in body["answer"]
    # Extractive answers are quoted from a source.
    assert COMFORT_PRICE in body["sources"][0]["text"]
    # No snippet sentence holds its words: too little overlap, whatever the similarity.
    assert body["grounding"]["supported"] is False
    assert body["grounding"]["reason"] == "low_overlap"
    assert body["grounding"]["sentences"][0]["text"] == "I like turtles very much."
    assert "degraded" not in body


def test_generated_text_with_snippet_words_but_other_meaning_is_not_grounded(
    make_gateway: Callable[..., Flask], fake_generator: FakeGenerator
) -> None:
    # Every content word occurs in the snippets, but in no one sentence: each sentence is
    # checked against the snippet sentences that back it, not against all the snippets' words.
    fake_generator.answer = "Brushed Brass sensor battery Chalk annually Slate coin payments."
    body = check_answer(ask(make_gateway(grounding_min_similarity=0.9).test_client()))
    assert body["grounding"]["supported"] is False
    assert body["grounding"]["overlap"] < 0.6
    assert body["mode"] == "extractive"


def test_low_best_score_answers_no_answer_and_still_lists_sources(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    fake_retriever.scores = [0.2, 0.1, 0.05]
    body = check_answer(ask(gateway, "Who won the 1998 World Cup final?"))
    assert body["mode"] == "no_answer"
    assert body["answer"] == NO_ANSWER_TEXT
    assert len(body["sources"]) == 3
    assert [s["score"] for s in body["sources"]] == [0.2, 0.1, 0.05]
    assert "grounding" not in body
    assert fake_generator.calls_to("/v1/generate") == []  # nothing to generate from


def test_relevance_adds_the_question_words_found_in_the_snippets(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    # Relevance = best score + NO_ANSWER_LEXICAL_WEIGHT x share of the question's content
    # words in the top snippets; below NO_ANSWER_MIN_RELEVANCE the answer is no_answer.
    client = make_gateway(no_answer_min_relevance=0.6, no_answer_lexical_weight=0.4).test_client()
    fake_retriever.scores = [0.3, 0.2, 0.1]
    covered = check_answer(ask(client))  # every content word of QUESTION is in faq-001
    assert covered["relevance"] == pytest.approx(0.7)
    assert covered["mode"] == "generated"
    off_topic = check_answer(ask(client, "Who won the 1998 World Cup final?"))
    assert off_topic["relevance"] == pytest.approx(0.3)
    assert off_topic["mode"] == "no_answer"


def test_no_answer_threshold_is_inclusive_and_configurable(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    off_topic = "Who won the 1998 World Cup final?"  # no word in the snippets: relevance = score
    fake_retriever.scores = [0.5, 0.3]
    at = make_gateway(no_answer_min_relevance=0.5).test_client()
    assert check_answer(ask(at, off_topic))["mode"] != "no_answer"
    above = make_gateway(no_answer_min_relevance=0.5001).test_client()
    assert check_answer(ask(above, off_topic))["mode"] == "no_answer"


def test_no_results_at_all_is_no_answer(gateway: Any, fake_retriever: FakeRetriever) -> None:
    fake_retriever.corpus = []
    body = check_answer(ask(gateway))
    assert body["mode"] == "no_answer"
    assert body["sources"] == []


def test_top_k_is_sent_to_the_retriever(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    client = make_gateway(default_top_k=2).test_client()
    assert len(check_answer(ask(client))["sources"]) == 2
    assert len(check_answer(ask(client, top_k=1))["sources"]) == 1
    assert [c.body["top_k"] for c in fake_retriever.calls_to("/v1/search")] == [2, 1]


def test_the_search_mode_is_always_named(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    check_answer(ask(make_gateway().test_client()))
    check_answer(ask(make_gateway(search_mode="dense").test_client()))
    assert [c.body["mode"] for c in fake_retriever.calls_to("/v1/search")] == ["hybrid", "dense"]


def test_relevance_reads_the_best_cosine_wherever_it_ranks(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    # Hybrid search orders by its fused score: the best cosine may come second.
    fake_retriever.scores = [0.2, 0.8, 0.1]
    body = check_answer(ask(gateway))
    assert body["mode"] != "no_answer"
    assert body["relevance"] >= 0.8


# -- the generator failing: degraded, not down ------------------------------------------------


def _assert_degraded(body: dict[str, Any], reason: str) -> None:
    assert body["mode"] == "extractive"
    assert body["degraded"] == [reason]
    assert "$3.49" in body["answer"]
    assert body["sources"][0]["document_id"] == "faq-001"
    assert "grounding" not in body


def test_generator_down_answers_extractively(
    make_gateway: Callable[..., Flask], closed_url: str
) -> None:
    client = make_gateway(generator_url=closed_url).test_client()
    _assert_degraded(check_answer(ask(client)), "generator_unavailable")


def test_generator_too_slow_answers_extractively(
    make_gateway: Callable[..., Flask], fake_generator: FakeGenerator
) -> None:
    fake_generator.delay_s["/v1/generate"] = 10
    client = make_gateway(generator_read_timeout_s=0.3).test_client()
    _assert_degraded(check_answer(ask(client)), "generator_timeout")
    # A read timeout may have done the work: it is never retried.
    assert len(fake_generator.calls_to("/v1/generate")) == 1


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (429, "generator_overloaded"),
        (500, "generator_error"),
        (503, "generator_unavailable"),
        (400, "generator_error"),
    ],
)
def test_generator_error_status_answers_extractively(
    gateway: Any, fake_generator: FakeGenerator, status: int, reason: str
) -> None:
    fake_generator.fail["/v1/generate"] = status
    _assert_degraded(check_answer(ask(gateway)), reason)


def test_embedding_failure_still_answers_from_word_overlap(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    fake_retriever.fail["/v1/embed"] = 500
    fake_generator.answer = "I like turtles very much."
    body = check_answer(ask(gateway))
    assert body["mode"] == "extractive"
    assert "$3.49" in body["answer"]
    assert body["degraded"] == ["grounding_check_unavailable", "extraction_lexical_only"]


def test_embedding_failure_accepts_only_a_verbatim_generated_answer(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    fake_retriever.fail["/v1/embed"] = 503
    body = check_answer(ask(gateway))
    assert body["mode"] == "generated"  # the fake echoes a snippet sentence word for word
    assert body["degraded"] == ["grounding_check_unavailable"]


# -- the retriever failing: the request fails, in the envelope --------------------------------


def test_retriever_down_is_503(make_gateway: Callable[..., Flask], closed_url: str) -> None:
    client = make_gateway(retriever_url=closed_url).test_client()
    assert_error_envelope(ask(client), 503, "dependency_unavailable")
    assert_error_envelope(ask(client, stream=True), 503, "dependency_unavailable")


def test_retriever_too_slow_is_504(
    make_gateway: Callable[..., Flask], fake_retriever: FakeRetriever
) -> None:
    fake_retriever.delay_s["/v1/search"] = 10
    client = make_gateway(retriever_read_timeout_s=0.3).test_client()
    assert_error_envelope(ask(client), 504, "dependency_timeout")


@pytest.mark.parametrize("status", [500, 503])
def test_retriever_server_error_is_502(
    gateway: Any, fake_retriever: FakeRetriever, status: int
) -> None:
    fake_retriever.fail["/v1/search"] = status
    error = assert_error_envelope(ask(gateway), 502, "bad_gateway")
    assert str(status) in error["message"]


# -- conversation -----------------------------------------------------------------------------


def test_follow_up_is_also_retrieved_with_the_previous_question(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    history = [
        {"role": "user", "text": "What battery does the Room Sensor use?"},
        {"role": "assistant", "text": "One CR2477 coin cell."},
    ]
    body = check_answer(ask(gateway, "and how long does it last?", history=history))
    queries = [c.body["query"] for c in fake_retriever.calls_to("/v1/search")]
    assert queries == [
        "and how long does it last?",
        "What battery does the Room Sensor use? and how long does it last?",
    ]
    assert body["sources"][0]["document_id"] == "faq-016"
    # Merged, best score per chunk, no chunk twice.
    chunk_ids = [s["chunk_id"] for s in body["sources"]]
    assert len(chunk_ids) == len(set(chunk_ids))
    (call,) = fake_generator.calls_to("/v1/generate")
    assert call.body["history"] == history
    assert call.body["question"] == "and how long does it last?"


def test_history_is_capped_to_the_last_turns(
    make_gateway: Callable[..., Flask], fake_generator: FakeGenerator
) -> None:
    history = [
        {"role": "user" if i % 2 == 0 else "assistant", "text": f"turn {i}"} for i in range(10)
    ]
    check_answer(ask(make_gateway(max_history_turns=4).test_client(), history=history))
    (call,) = fake_generator.calls_to("/v1/generate")
    assert call.body["history"] == history[-4:]


def test_a_new_question_without_history_is_searched_once(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    history = [{"role": "assistant", "text": "Hello, ask me anything."}]
    check_answer(ask(gateway, history=history))
    assert [c.body["query"] for c in fake_retriever.calls_to("/v1/search")] == [QUESTION]


# -- request ids ------------------------------------------------------------------------------


def test_request_id_is_forwarded_to_both_services_and_echoed(
    gateway: Any, fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> None:
    response = gateway.post(
        "/v1/ask", json={"question": QUESTION}, headers={"X-Request-ID": "trace-42.a:b"}
    )
    body = check_answer(response)
    assert response.headers["X-Request-ID"] == "trace-42.a:b"
    assert body["request_id"] == "trace-42.a:b"
    seen = [c.headers.get("X-Request-Id") for c in fake_retriever.calls + fake_generator.calls]
    assert len(seen) >= 3  # search, generate, embed (grounding)
    assert set(seen) == {"trace-42.a:b"}


def test_request_id_is_made_when_missing_or_unsafe(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    made = check_answer(ask(gateway))["request_id"]
    unsafe = gateway.post(
        "/v1/ask", json={"question": QUESTION}, headers={"X-Request-ID": "bad id\twith spaces"}
    )
    replaced = check_answer(unsafe)["request_id"]
    assert made
    assert replaced
    assert made != replaced
    assert replaced != "bad id\twith spaces"
    sent = [c.headers["X-Request-Id"] for c in fake_retriever.calls_to("/v1/search")]
    assert sent == [made, replaced]


def test_request_id_is_in_error_envelopes_from_downstream_failures(
    gateway: Any, fake_retriever: FakeRetriever
) -> None:
    fake_retriever.fail["/v1/search"] = 500
    response = gateway.post(
        "/v1/ask", json={"question": QUESTION}, headers={"X-Request-ID": "req-7"}
    )
    assert assert_error_envelope(response, 502)["request_id"] == "req-7"


def test_corpus_snippets_are_returned_verbatim(gateway: Any) -> None:
    body = check_answer(ask(gateway))
    texts = {c["chunk_id"]: c["text"] for c in CORPUS}
    for source in body["sources"]:
        assert source["text"] == texts[source["chunk_id"]]
        assert isinstance(source["metadata"], dict)


def test_the_generator_is_told_when_the_gateway_stops_waiting(
    make_gateway: Any, fake_generator: FakeGenerator
) -> None:
    client = make_gateway(generator_read_timeout_s=12).test_client()
    client.post("/v1/ask", json={"question": "How long does the sensor battery last?"})
    client.post("/v1/ask", json={"question": "And the thermostat?", "stream": True}).get_data()
    bodies = [c.body for c in fake_generator.calls_to("/v1/generate")]
    assert len(bodies) == 2
    # Before the gateway's own read timeout, so the generator gives up first, not after.
    assert all(0 < b["timeout_s"] < 12 for b in bodies), bodies
