"""The no-answer gate: do the snippets the retriever found cover the question?

One pure function of what a search returns (the hits' ``score`` and ``text``, the retriever's
``query_terms`` and ``collection_chunks``) and the question, so that the gateway and
``bench/no_answer_gate.py`` (where the settings are chosen) compute exactly the same number:

    relevance = best cosine of the hits
              + lexical_weight × share of the question's content words found in the top 3 snippets
              - missing_rare_penalty, when a rare query term occurs in none of the top 3 snippets

The share counts each word by its IDF in the collection when ``idf_weighted`` (a rare name
weighs more than "year"), else every word the same (the gate before issue 9). A query term is
rare when its IDF, divided by the IDF of a term no chunk holds, is at least ``rare_min_idf``:
divided so that one setting means the same in a collection of 50 chunks and of 50,000 ones.
With ``rare_names_only`` only the question's names count: words written with a capital inside
the sentence, or with a digit ("Vistula", "Z-Wave", "E3"); a paraphrase's own words ("fiddling",
"cabin") are often in no chunk at all, a name the documents never mention is the evidence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.text import content_words, term_weights, weighted_overlap

# Snippets whose words count towards a question's relevance.
RELEVANCE_SNIPPETS = 3


class Hit(Protocol):
    """What the gate reads of a search hit (the gateway's ``Source`` has both)."""

    @property
    def score(self) -> float: ...

    @property
    def text(self) -> str: ...


@dataclass(frozen=True)
class GateSettings:
    """How relevance is computed; the gateway refuses below ``min_relevance``."""

    lexical_weight: float
    min_relevance: float
    idf_weighted: bool = True
    # None: no rare-term rule. Else: terms with normalized IDF >= this are "rare".
    rare_min_idf: float | None = None
    missing_rare_penalty: float = 0.0
    rare_names_only: bool = False


_TOKEN = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?:][\"'”’)\]]*$")


def max_idf(collection_chunks: int) -> float:
    """Return the IDF of a term no chunk holds (the retriever's BM25 IDF, Lucene's form)."""
    return math.log(1.0 + (collection_chunks + 0.5) / 0.5)


def word_share(
    question: str, hits: Sequence[Hit], query_terms: Sequence[Mapping[str, Any]] | None = None
) -> float:
    """Share of the question's content words found in the best-covering top snippet.

    With ``query_terms`` each word counts by its IDF (``gateway.text.weighted_overlap``), else
    every word the same.
    """
    words = content_words(question)
    top = hits[:RELEVANCE_SNIPPETS]
    if not top:
        return 0.0
    weights = term_weights(query_terms) if query_terms is not None else {}
    return max(weighted_overlap(words, content_words(h.text), weights) for h in top)


def names(question: str) -> set[str]:
    """Return the content words of the question's names: capitalized inside a sentence, or
    holding a digit ("Which plateau is the Vistula on?" → {"vistula"})."""
    found: set[str] = set()
    starts_sentence = True
    for token in _TOKEN.findall(question):
        bare = token.lstrip("\"'“‘([")
        if any(c.isdigit() for c in bare) or (not starts_sentence and bare[:1].isupper()):
            found |= content_words(bare)
        starts_sentence = bool(_SENTENCE_END.search(token))
    return found


def missing_rare_term(
    query_terms: Sequence[Mapping[str, Any]] | None,
    collection_chunks: int | None,
    min_normalized_idf: float,
    only: set[str] | None = None,
) -> bool:
    """Tell whether a rare content term of the query occurs in none of the top snippets.

    Only terms that hold a content word count ("which" or "did" never make a question
    unanswerable), and with ``only``, terms that hold one of those words.
    ``result_ranks`` are the retriever's, 1-based.
    """
    if not query_terms or not collection_chunks:
        return False
    ceiling = max_idf(collection_chunks)
    for term in query_terms:
        words = content_words(str(term["term"]))
        if not words or (only is not None and not words & only):
            continue
        rare = float(term["idf"]) / ceiling >= min_normalized_idf
        in_top = any(rank <= RELEVANCE_SNIPPETS for rank in term.get("result_ranks") or ())
        if rare and not in_top:
            return True
    return False


def relevance(
    question: str,
    hits: Sequence[Hit],
    query_terms: Sequence[Mapping[str, Any]] | None,
    collection_chunks: int | None,
    settings: GateSettings,
) -> float:
    """Score how well the hits cover the question; -1 when there are none."""
    if not hits:
        return -1.0
    # Hybrid search does not order by cosine: take the best cosine, wherever it ranks.
    cosine = max(float(h.score) for h in hits)
    share = word_share(question, hits, query_terms if settings.idf_weighted else None)
    score = cosine + settings.lexical_weight * share
    only = names(question) if settings.rare_names_only else None
    if settings.rare_min_idf is not None and missing_rare_term(
        query_terms, collection_chunks, settings.rare_min_idf, only
    ):
        score -= settings.missing_rare_penalty
    return score


def refuses(
    question: str,
    hits: Sequence[Hit],
    query_terms: Sequence[Mapping[str, Any]] | None,
    collection_chunks: int | None,
    settings: GateSettings,
) -> bool:
    """Tell whether the gateway should answer ``no_answer``."""
    return relevance(question, hits, query_terms, collection_chunks, settings) < (
        settings.min_relevance
    )


__all__ = [
    "RELEVANCE_SNIPPETS",
    "GateSettings",
    "Hit",
    "max_idf",
    "missing_rare_term",
    "names",
    "refuses",
    "relevance",
    "word_share",
]
