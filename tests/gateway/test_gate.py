"""The no-answer gate's relevance: pure, from a search response's pieces."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from gateway import gate
from gateway.gate import GateSettings


@dataclass(frozen=True)
class Hit:
    score: float
    text: str


def term(word: str, idf: float, ranks: list[int]) -> dict:
    return {
        "term": word,
        "document_frequency": 1,
        "idf": idf,
        "in_results": bool(ranks),
        "result_ranks": ranks,
    }


RHINE = Hit(0.55, "The Rhine flows from the Alps to the North Sea through Germany.")
PLATEAU = Hit(0.40, "The plateau lies on the left bank of the river.")
QUESTION = "Which plateau is the left part of Vistula on?"
TERMS = [
    term("which", 0.1, [1, 2]),
    term("plateau", 2.0, [2]),
    term("left", 1.0, [2]),
    term("part", 0.8, []),
    term("vistula", gate.max_idf(100), []),
]


def test_without_weights_it_is_cosine_plus_plain_share() -> None:
    # Content words: plateau, left, part, vistula; PLATEAU holds 2 of 4.
    settings = GateSettings(lexical_weight=0.4, min_relevance=0.52, idf_weighted=False)
    value = gate.relevance(QUESTION, [RHINE, PLATEAU], TERMS, 100, settings)
    assert value == pytest.approx(0.55 + 0.4 * 0.5)


def test_idf_weighting_makes_the_missing_rare_word_count() -> None:
    settings = GateSettings(lexical_weight=0.4, min_relevance=0.52)
    share = gate.word_share(QUESTION, [RHINE, PLATEAU], TERMS)
    assert share == pytest.approx((2.0 + 1.0) / (2.0 + 1.0 + 0.8 + gate.max_idf(100)))
    assert share < gate.word_share(QUESTION, [RHINE, PLATEAU])
    value = gate.relevance(QUESTION, [RHINE, PLATEAU], TERMS, 100, settings)
    assert value == pytest.approx(0.55 + 0.4 * share)


def test_a_rare_term_in_no_top_snippet_costs_the_penalty() -> None:
    settings = GateSettings(0.4, 0.52, rare_min_idf=0.9, missing_rare_penalty=0.3)
    plain = GateSettings(0.4, 0.52)
    with_rule = gate.relevance(QUESTION, [RHINE, PLATEAU], TERMS, 100, settings)
    without = gate.relevance(QUESTION, [RHINE, PLATEAU], TERMS, 100, plain)
    assert with_rule == pytest.approx(without - 0.3)
    assert gate.refuses(QUESTION, [RHINE, PLATEAU], TERMS, 100, settings)


def test_the_rule_reads_ranks_of_the_top_three_only_and_content_terms_only() -> None:
    ceiling = gate.max_idf(10)
    found_late = [term("vistula", ceiling, [4])]
    assert gate.missing_rare_term(found_late, 10, 0.9)
    found = [term("vistula", ceiling, [3])]
    assert not gate.missing_rare_term(found, 10, 0.9)
    # "which" is not a content word: its rarity never refuses.
    assert not gate.missing_rare_term([term("which", ceiling, [])], 10, 0.9)
    # Common terms are not rare.
    assert not gate.missing_rare_term([term("river", 0.5 * ceiling, [])], 10, 0.9)
    # Without the retriever's term statistics there is no rule.
    assert not gate.missing_rare_term(None, 10, 0.9)
    assert not gate.missing_rare_term(found_late, None, 0.9)


def test_max_idf_is_the_retrievers_bm25_idf_of_an_unseen_term() -> None:
    assert gate.max_idf(100) == pytest.approx(math.log(1 + 100.5 / 0.5))


def test_no_hits_is_never_relevant() -> None:
    settings = GateSettings(0.4, -0.5)
    assert gate.relevance(QUESTION, [], TERMS, 100, settings) == -1.0
    assert gate.refuses(QUESTION, [], TERMS, 100, settings)


def test_names_are_capitalized_inside_the_sentence_or_hold_a_digit() -> None:
    assert gate.names("Which plateau is the left part of Vistula on?") == {"vistula"}
    assert gate.names("Does Halo support Z-Wave?") == {"halo", "wave"}
    assert gate.names("my thermostat is showing E2, what's wrong") == {"e2"}
    assert gate.names("Is it cold? Where is the list. In 1998 I left.") == {"1998"}


def test_names_only_rule_ignores_a_paraphrases_unseen_words() -> None:
    question = "how do I stop my kids from fiddling with the Halo dial"
    ceiling = gate.max_idf(100)
    terms = [term("fiddling", ceiling, []), term("halo", 0.5 * ceiling, [1])]
    hits = [Hit(0.6, "Lock the Halo dial with a PIN.")]
    names_only = GateSettings(
        0.4, 0.5, rare_min_idf=0.9, missing_rare_penalty=10.0, rare_names_only=True
    )
    every_term = GateSettings(0.4, 0.5, rare_min_idf=0.9, missing_rare_penalty=10.0)
    assert not gate.refuses(question, hits, terms, 100, names_only)
    assert gate.refuses(question, hits, terms, 100, every_term)
    vistula = [term("vistula", ceiling, []), term("plateau", 0.5 * ceiling, [1])]
    assert gate.refuses(QUESTION, [RHINE, PLATEAU], vistula, 100, names_only)
