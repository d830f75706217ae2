"""Sentence splitting and word overlap: the gateway's light text tools (it loads no model)."""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

_BLOCK_BREAK = re.compile(r"\n+")
# The closing quotes/brackets after the end stay with their sentence (lookbehinds, not eaten).
_SENTENCE_END = re.compile(
    r"(?:(?<=[.!?…])|(?<=[.!?…][\"'”’)\]])|(?<=[.!?…][\"'”’)\]]{2}))"
    r"\s+(?=[\"'“‘(\[]?[A-Z0-9$£€])"
)
_MARKUP_PREFIX = re.compile(r"^\s*(#{1,6}\s+|[-*+•]\s+|\d{1,3}[.)]\s+|>\s*)")
_WORD = re.compile(r"[a-z0-9]+(?:[.,'’][a-z0-9]+)*")

STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just let me more most my myself no nor not now of off on once only or other our
    ours ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    also get got may might must shall us one ones thing things there's it's i'm don't does
    doesn't can't isn't""".split()
)


def split_sentences(text: str) -> list[str]:
    """Split a snippet into sentences, one per line-level block, without Markdown markers."""
    sentences = []
    for block in _BLOCK_BREAK.split(text):
        block = _MARKUP_PREFIX.sub("", block).strip()
        if not block:
            continue
        sentences.extend(s.strip() for s in _SENTENCE_END.split(block) if s.strip())
    return sentences


def _normalize(word: str) -> str:
    word = word.replace("’", "'").strip(".,'")
    word = word.removesuffix("'s")
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word


def content_words(text: str) -> set[str]:
    """Return the lower-cased, lightly stemmed words of a text that carry meaning."""
    # Stopwords are dropped before stemming too: "does" and "this" would become "doe", "thi".
    words = (_normalize(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS)
    return {w for w in words if w and w not in STOPWORDS and (len(w) > 1 or w.isdigit())}


def overlap(part: set[str], whole: set[str]) -> float:
    """Share of ``part``'s words found in ``whole`` (0 when ``part`` is empty)."""
    return len(part & whole) / len(part) if part else 0.0


def term_weights(query_terms: Sequence[Mapping[str, Any]] | None) -> dict[str, float]:
    """Map the question's content words to their IDF in the collection, from a search response."""
    weights: dict[str, float] = {}
    for term in query_terms or ():
        # "ht-250" is one retriever term and two words here: each gets the phrase's rarity.
        for word in content_words(str(term["term"])):
            weights[word] = max(weights.get(word, 0.0), float(term["idf"]))
    return weights


def weighted_overlap(part: set[str], whole: set[str], weights: Mapping[str, float]) -> float:
    """Share of ``part``'s words found in ``whole``, each word counted by its weight.

    Without weights every word counts the same (``overlap``); a word the weights miss counts as
    much as the median of those they have.
    """
    if not weights:
        return overlap(part, whole)
    default = statistics.median(weights.values())
    total = sum(weights.get(w, default) for w in part)
    if total <= 0:
        return overlap(part, whole)
    return sum(weights.get(w, default) for w in part & whole) / total
