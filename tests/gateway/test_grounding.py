"""The grounding check on its own, with the real MiniLM embeddings: what it lets through, what
it sets aside, and why."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from gateway.grounding import (
    GroundingSettings,
    SnippetSentence,
    Verdict,
    check,
    clauses,
    degeneration,
    facts,
)
from gateway.text import split_sentences

WARRANTY = (
    "The standard Halo has a 2-year limited warranty and Halo Pro has a 3-year limited warranty. "
    "Room Sensors and the C-Wire Adapter are covered for 1 year."
)
PRICES = (
    "The standard Halo (model HT-200) sells for $169 and the Halo Pro (model HT-250) sells for "
    "$229 in the Brightfern store."
)
COMFORT = (
    "Comfort+ costs $3.49 per month, or $34 per year if you pay annually. Paying yearly works "
    "out to roughly 19% less than twelve monthly payments."
)
HOUSEHOLD = (
    "The Household plan costs $5.99 per month or $59 per year. It includes every Comfort+ "
    "feature for up to 3 homes and lets up to 6 people share control."
)
CODES = (
    "- E3: The wires detected do not match the system type chosen during setup. Run the setup "
    "wizard again from Settings > Equipment.\n"
    "- E6: The thermostat is too hot inside, usually from direct sunlight.\n"
    "- E7: A firmware update failed. Halo will retry the update automatically the following night."
)


@pytest.fixture(scope="module")
def embed(embedder) -> Callable[[Sequence[str]], np.ndarray]:
    return lambda texts: np.asarray(embedder.encode(list(texts)))


def verdict(embed, question: str, snippet: str, answer: str, **settings) -> Verdict:
    sentences = split_sentences(snippet)
    scores = (embed([question]) @ embed(sentences).T)[0]
    rank = {int(i): r for r, i in enumerate(np.argsort(-scores))}
    ranked = [SnippetSentence(0, i, text, rank[i]) for i, text in enumerate(sentences)]
    return check(answer, question, ranked, embed, GroundingSettings(**settings))


@pytest.mark.parametrize(
    ("question", "snippet", "answer"),
    [
        ("How much does the Household plan cost?", HOUSEHOLD, "It costs $5.99 a month."),
        ("How many people can share it?", HOUSEHOLD, "Up to six people can share control."),
        ("How long is the Halo Pro warranty?", WARRANTY, "Halo Pro has a 3-year warranty."),
        ("How much is the Halo Pro?", PRICES, "The Halo Pro (HT-250) sells for $229."),
        ("How much is Comfort+?", COMFORT, "Comfort+ costs $3.49 a month or $34 a year."),
        (
            "What does error E3 mean?",
            CODES,
            "E3 means the wires do not match the system type chosen during setup. Run the setup "
            "wizard again from Settings > Equipment.",
        ),
    ],
)
def test_a_faithful_answer_is_supported(embed, question: str, snippet: str, answer: str) -> None:
    result = verdict(embed, question, snippet, answer)
    assert result.supported, result.to_dict()
    assert result.reason is None


@pytest.mark.parametrize(
    ("question", "snippet", "answer", "reason", "missing"),
    [
        # A number near the right one.
        (
            "How much does the Household plan cost?",
            HOUSEHOLD,
            "The Household plan costs $5.98 per month.",
            "missing_facts",
            ["5.98", "5.98 month"],
        ),
        # The right number with the wrong unit.
        ("How much is Comfort+?", COMFORT, "Comfort+ costs $34 per month.", "missing_facts", None),
        # Both facts are in the sentence, but in different statements of it.
        (
            "How long is the Halo Pro warranty?",
            WARRANTY,
            "The warranty on the Halo Pro is 2 years.",
            "facts_apart",
            ["pro"],
        ),
        ("How much is the Halo Pro?", PRICES, "The Halo Pro costs $169.", "facts_apart", None),
        # E7's meaning told for E3: no E3 sentence says it.
        (
            "What does error E3 mean?",
            CODES,
            "The error E3 is a firmware update failure.",
            "low_overlap",
            None,
        ),
        # A phone number the snippets never give.
        (
            "What is the support phone number?",
            HOUSEHOLD,
            "The phone number for support is 1-800-243-7596.",
            "missing_facts",
            None,
        ),
    ],
)
def test_a_wrong_answer_is_set_aside_with_its_reason(
    embed, question: str, snippet: str, answer: str, reason: str, missing: list[str] | None
) -> None:
    result = verdict(embed, question, snippet, answer)
    assert not result.supported
    assert result.reason == reason, result.to_dict()
    if missing is not None:
        assert result.sentences[0].missing == missing


def test_a_supported_sentence_that_does_not_answer_is_set_aside(embed) -> None:
    # True, and from the snippet, but the question asked about something else.
    result = verdict(
        embed,
        "How much does the Household plan cost?",
        HOUSEHOLD + " Support hours are 6 AM to 6 PM. Emails are answered within 1 business day.",
        "Emails are answered within 1 business day.",
        top_sentences=2,
    )
    assert not result.supported
    assert result.reason == "support_does_not_answer"


def test_every_sentence_must_be_supported(embed) -> None:
    result = verdict(
        embed,
        "How much does the Household plan cost?",
        HOUSEHOLD,
        "The Household plan costs $5.99 per month. Call 555-0199 to sign up.",
    )
    assert not result.supported
    assert [s.supported for s in result.sentences] == [True, False]


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("", "empty"),
        ("The steam turbine connected to is the steam turbine. " * 3, "repetition"),
        ("It costs $5.99. It costs $5.99.", "repetition"),
        ("How much does the Household plan cost?", "echoes_question"),
        ("$5.99 per month. Question: and per year?", "prompt_markers"),
        ("The answer is $5.99<|im_end|>", "prompt_markers"),
        ("Context: The Household plan costs $5.99.", "prompt_markers"),
    ],
)
def test_degenerate_text_is_no_answer(answer: str, reason: str) -> None:
    assert degeneration(answer, "How much does the Household plan cost?") == reason


def test_plain_answers_are_not_degenerate() -> None:
    assert degeneration("It costs $5.99 per month or $59 per year.", "How much is it?") is None


def test_facts_are_numbers_with_units_codes_and_names() -> None:
    assert facts("The Halo Pro costs $229 and lasts 3 years.") == {
        "halo",
        "pro",
        "229",
        "3",
        "3 year",
    }
    assert facts("Call 1-800-555-0193 about error E3.") >= {"1", "800", "555", "0193", "e3"}
    assert facts("Up to six people") == {"6"}
    # The first word of a sentence is capitalized anyway: not a name.
    assert facts("Restarting fixes it.") == set()
    assert clauses("A costs $1, or $2 per year and B is free.") == [
        "A costs $1",
        "$2 per year",
        "B is free.",
    ]


def test_a_number_keeps_its_unit_of_length_or_share() -> None:
    assert facts("It has a 40-meter range.") >= {"40", "40 meter"}
    assert facts("It measures 40 mm.") >= {"40", "40 mm"}
    assert facts("Mount it 5 feet up; save 30% or 30 percent.") >= {"5 foot", "30 percent"}
