"""gateway.answering pieces, directly: extraction, grounding, follow-ups, degraded reasons."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.answering import (
    NO_ANSWER_TEXT,
    Answerer,
    Source,
    Turn,
    contextual_question,
    degraded_reason,
    gate_settings,
)
from gateway.config import GatewayConfig
from gateway.gate import relevance as gate_relevance
from qa_common.errors import (
    BadGateway,
    DependencyTimeout,
    DependencyUnavailable,
    DownstreamError,
    Overloaded,
    ServiceError,
)
from tests.gateway.conftest import fake_embed


class EmbedStub:
    """Stands in for the retriever client: only ``embed``, with the fake bag-of-words model."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        if self.fail:
            raise DependencyUnavailable("retriever down", dependency="retriever")
        return [fake_embed(t) for t in texts]


def answerer(fail_embed: bool = False, **overrides: Any) -> Answerer:
    config = GatewayConfig(
        retriever_url="http://unused", generator_url="http://unused", **overrides
    )
    return Answerer(EmbedStub(fail_embed), None, config)  # type: ignore[arg-type]


def source(text: str, score: float = 0.7, doc: str = "d") -> Source:
    return Source(document_id=doc, chunk_id=f"{doc}#0", text=text, score=score, metadata={})


FAQ = source(
    "What battery does the Room Sensor use and how long does it last?\n"
    "The Room Sensor runs on one CR2477 coin cell battery, which typically lasts about 3 years. "
    "The app warns you when the battery drops below 15%."
)


# -- extraction -------------------------------------------------------------------------------


def test_extract_picks_the_sentence_with_the_answer_not_the_faq_question() -> None:
    text, degraded = answerer().extract("What battery does the room sensor use?", [FAQ])
    assert text.startswith("The Room Sensor runs on one CR2477 coin cell battery")
    assert "?" not in text
    assert degraded == []


def test_extract_adds_the_following_sentence_of_the_same_snippet() -> None:
    two, _ = answerer().extract("What battery does the room sensor use?", [FAQ])
    assert two.endswith("The app warns you when the battery drops below 15%.")
    one, _ = answerer(extractive_max_sentences=1).extract(
        "What battery does the room sensor use?", [FAQ]
    )
    assert one == (
        "The Room Sensor runs on one CR2477 coin cell battery, which typically lasts about 3 years."
    )


def test_extract_prefers_the_snippet_that_answers() -> None:
    colors = source(
        "What colors does Halo come in?\nThe standard Halo comes in Chalk, Slate, and Sage.",
        score=0.5,
        doc="colors",
    )
    text, _ = answerer(extractive_max_sentences=1).extract(
        "which colors does the standard Halo come in", [FAQ, colors]
    )
    assert text == "The standard Halo comes in Chalk, Slate, and Sage."


def test_extract_without_embeddings_uses_word_overlap() -> None:
    text, degraded = answerer(fail_embed=True, extractive_max_sentences=1).extract(
        "when does the app warn about the battery", [FAQ]
    )
    assert text == "The app warns you when the battery drops below 15%."
    assert degraded == ["extraction_lexical_only"]


def test_extract_falls_back_to_questions_only_when_nothing_else_is_there() -> None:
    only_questions = source("Does Halo work with boilers?\nIs a C-wire needed?")
    text, _ = answerer(extractive_max_sentences=1).extract("boilers", [only_questions])
    assert text == "Does Halo work with boilers?"
    assert answerer().extract("anything", []) == (NO_ANSWER_TEXT, [])


# -- grounding --------------------------------------------------------------------------------


BATTERY_QUESTION = "What battery does the Room Sensor use?"


def ground(a: Answerer, text: str, sources: list[Source], question: str = BATTERY_QUESTION):
    ranked, _ = a.rank_sentences(question, question, sources)
    return a.grounding(text, question, ranked)


def test_grounding_supports_a_restated_snippet_sentence() -> None:
    result, degraded = ground(
        answerer(), "The Room Sensor runs on one CR2477 coin cell battery.", [FAQ]
    )
    assert result["supported"] is True
    assert result["reason"] is None
    assert result["overlap"] == 1.0
    assert result["similarity"] > 0.8
    (sentence,) = result["sentences"]
    assert sentence["support"].startswith("The Room Sensor runs on one CR2477")
    assert degraded == []


def test_grounding_rejects_words_not_in_the_snippets() -> None:
    result, _ = ground(answerer(), "I like turtles very much.", [FAQ])
    assert result["supported"] is False
    assert result["reason"] == "low_overlap"


def test_grounding_rejects_snippet_words_in_another_meaning() -> None:
    a = answerer(grounding_min_similarity=0.8)
    result, _ = ground(a, "Battery app sensor drops years coin warns.", [FAQ])
    assert result["supported"] is False
    assert result["similarity"] < 0.8


def test_grounding_rejects_a_number_the_snippet_does_not_state() -> None:
    result, _ = ground(answerer(), "The Room Sensor battery typically lasts about 4 years.", [FAQ])
    assert result["supported"] is False
    assert result["reason"] == "missing_facts"
    assert result["sentences"][0]["missing"] == ["4", "4 year"]


def test_grounding_needs_every_sentence_supported() -> None:
    text = "The Room Sensor runs on one CR2477 coin cell battery. Call 555-0199 for a spare."
    result, _ = ground(answerer(), text, [FAQ])
    assert result["supported"] is False
    assert [s["supported"] for s in result["sentences"]] == [True, False]


def test_grounding_without_embeddings_trusts_only_near_verbatim_text() -> None:
    a = answerer(fail_embed=True)
    verbatim, degraded = ground(a, "The Room Sensor runs on one CR2477 coin cell battery.", [FAQ])
    assert verbatim["supported"] is True
    assert "grounding_check_unavailable" in degraded
    loose, _ = ground(a, "The Room Sensor battery lasts 3 years in the garage.", [FAQ])
    assert loose["overlap"] >= 0.6
    assert loose["supported"] is False


# -- follow-ups, relevance, degraded reasons --------------------------------------------------


def test_contextual_question_prefixes_the_last_user_turn() -> None:
    history = [
        Turn("user", "What is Comfort+?"),
        Turn("assistant", "A subscription."),
        Turn("user", "What battery does the sensor use?"),
        Turn("assistant", "CR2477."),
    ]
    assert contextual_question("how long does it last?", history) == (
        "What battery does the sensor use? how long does it last?"
    )
    assert contextual_question("hi", []) == "hi"
    assert contextual_question("hi", [Turn("assistant", "Hello")]) == "hi"


def relevance(question: str, sources: list[Source], config: GatewayConfig | None = None) -> float:
    config = config or GatewayConfig(retriever_url="http://unused", generator_url="http://unused")
    return gate_relevance(question, sources, None, None, gate_settings(config))


def test_relevance_is_score_plus_weighted_word_share() -> None:
    sources = [source("Comfort+ costs $3.49 per month.", score=0.3)]
    assert relevance("Comfort+ cost per month", sources) == pytest.approx(0.7)
    assert relevance("world cup final", sources) == pytest.approx(0.3)
    assert relevance("anything", []) == -1.0


def test_the_measured_gate_variants_are_settings() -> None:
    config = GatewayConfig(
        retriever_url="http://unused",
        generator_url="http://unused",
        no_answer_idf_weighted=True,
        no_answer_missing_name_penalty=0.1,
    )
    settings = gate_settings(config)
    assert settings.idf_weighted is True
    assert settings.missing_rare_penalty == 0.1
    assert settings.rare_names_only is True
    # Off by default: the gate measured before issue 9.
    default = gate_settings(GatewayConfig(retriever_url="http://u", generator_url="http://u"))
    assert (default.idf_weighted, default.rare_min_idf) == (False, None)


class SearchStub(EmbedStub):
    """A retriever stub whose search answers each query from a fixed table."""

    def __init__(self, results: dict[str, list[dict[str, Any]]]) -> None:
        super().__init__()
        self.results = results
        self.queries: list[str] = []

    def search(self, query: str, top_k: int, collection: str | None = None) -> dict[str, Any]:
        self.queries.append(query)
        return {"results": self.results.get(query, [])[:top_k]}


def hit(text: str, score: float, doc: str) -> dict[str, Any]:
    return {"document_id": doc, "chunk_id": f"{doc}:0", "text": text, "score": score}


PRICE = "How much does the Household plan cost?\nThe Household plan costs $5.99 per month."
PLAN = "What is the Household plan?\nIt covers up to three homes."
BATTERY = FAQ.text


def _answerer_with(results: dict[str, list[dict[str, Any]]]) -> tuple[Answerer, SearchStub]:
    stub = SearchStub(results)
    config = GatewayConfig(retriever_url="http://unused", generator_url="http://unused")
    return Answerer(stub, None, config), stub  # type: ignore[arg-type]


def test_follow_up_is_read_with_the_previous_question() -> None:
    previous = "What is the Household plan?"
    question = "and how much does it cost?"
    a, stub = _answerer_with(
        {
            question: [hit("Comfort+ costs $3.49 per month.", 0.35, "faq-001")],
            f"{previous} {question}": [hit(PRICE, 0.7, "faq-004"), hit(PLAN, 0.6, "faq-003")],
        }
    )
    sources, score, query, _ = a.retrieve(question, [Turn("user", previous)], 5)
    assert stub.queries == [question, f"{previous} {question}"]
    assert [s.document_id for s in sources] == ["faq-004", "faq-003"]
    assert query == f"{previous} {question}"
    assert score == pytest.approx(relevance(query, sources, a.config))


def test_new_topic_after_history_is_not_read_as_a_follow_up() -> None:
    previous = "What battery does the Room Sensor use?"
    question = "What is the capital of Mongolia?"
    a, _ = _answerer_with(
        {
            question: [hit("Ulaanbaatar is a big city? No: sensors.", 0.09, "x")],
            f"{previous} {question}": [hit(BATTERY, 0.68, "faq-016")],
        }
    )
    sources, score, query, _ = a.retrieve(question, [Turn("user", previous)], 5)
    assert query == question
    assert [s.document_id for s in sources] == ["x"]
    assert score < a.config.no_answer_min_relevance


def test_question_without_history_is_searched_once() -> None:
    a, stub = _answerer_with({"hi there": [hit(PLAN, 0.2, "faq-003")]})
    sources, _, query, _ = a.retrieve("hi there", [Turn("assistant", "Hello")], 5)
    assert stub.queries == ["hi there"]
    assert query == "hi there"
    assert len(sources) == 1


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (DependencyTimeout("slow"), "generator_timeout"),
        (DependencyUnavailable("down"), "generator_unavailable"),
        (Overloaded("busy", retry_after_s=2), "generator_overloaded"),
        (BadGateway("503", details={"status": 503, "code": "not_ready"}), "generator_unavailable"),
        (BadGateway("500", details={"status": 500, "code": "x"}), "generator_error"),
        (
            BadGateway("504", details={"status": 504, "code": "deadline_exceeded"}),
            "generator_timeout",
        ),
        (BadGateway("broke off mid-stream"), "generator_error"),
        (DownstreamError(422, "validation_error", "bad"), "generator_error"),
        (ServiceError(), "generator_error"),
    ],
)
def test_degraded_reason(error: ServiceError, reason: str) -> None:
    assert degraded_reason(error) == reason


def test_extraction_prefers_the_sentence_holding_the_questions_rare_words() -> None:
    codes = source(
        "- E3: The wires detected do not match the system type chosen during setup.\n"
        "- E6: The thermostat is too hot inside, usually from direct sunlight."
    )
    question = "Why does my thermostat show error E3?"
    weights = {"thermostat": 0.7, "show": 1.9, "error": 2.9, "e3": 4.2}
    chosen, _ = answerer(extractive_max_sentences=1, extractive_lexical_weight=1.0).extract(
        question, [codes], term_weights=weights
    )
    assert chosen.startswith("E3:")
    # With every word counted alike the two lines tie on shared words (one each).
    unweighted, _ = answerer(extractive_max_sentences=1, extractive_lexical_weight=1.0).extract(
        question, [codes]
    )
    assert unweighted in set(codes.text.replace("- ", "").split("\n"))


def test_a_follow_up_picks_the_sentence_for_its_own_words(embedder) -> None:
    class RealEmbed:
        def embed(self, texts: list[str]) -> list[list[float]]:
            return [list(map(float, v)) for v in embedder.encode(list(texts))]

    config = GatewayConfig(retriever_url="http://unused", generator_url="http://unused")
    a = Answerer(RealEmbed(), None, config)  # type: ignore[arg-type]
    price = source(
        "How much does the Household plan cost?\nThe Household plan costs $5.99 per month or "
        "$59 per year. A single subscription covers every home on your account.",
        score=0.8,
        doc="faq-004",
    )
    sharing = source(
        "What is the Household plan?\nThe Household plan is a subscription for people who look "
        "after more than one property. It includes every Comfort+ feature for up to 3 homes and "
        "lets up to 6 people share control.",
        score=0.7,
        doc="faq-003",
    )
    follow_up = "and can I share it with my family?"
    searched_with = f"How much does the Household plan cost? {follow_up}"
    text, _ = a.extract(follow_up, [price, sharing], query=searched_with)
    assert "share control" in text
    # Read as one question, the price sentence wins: that was the old answer.
    old, _ = a.extract(searched_with, [price, sharing])
    assert "$5.99" in old
