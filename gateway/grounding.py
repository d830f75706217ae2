"""Decide whether a generated answer may be shown as ``generated``: the grounding check.

A small model writes fluent text with the wrong number in it ("$5.98" for "$5.99"), swaps two
codes ("E3 is a firmware failure": that is E7), invents a phone number, or loops. Word overlap
with all the snippets and one similarity score let each of those through, so the check reads
the answer sentence by sentence. A sentence is supported when one snippet sentence (or two
adjacent ones) backs it:

- every number, amount, code, date and name in it occurs in the sentence that backs it most
  (the *anchor*), and the facts of each of its clauses occur together in one clause there:
  "the Halo Pro has a 2-year warranty" is not backed by "the standard Halo has a 2-year
  warranty and Halo Pro has a 3-year warranty", which holds "Halo Pro" and "2" but apart;
- most of its content words occur there (``GROUNDING_MIN_OVERLAP``) and it means much the same
  (cosine of the two sentences ≥ ``GROUNDING_MIN_SIMILARITY``);
- the anchor answers the question: it is among the ``GROUNDING_TOP_SENTENCES`` snippet
  sentences the extractor ranks best for this question (a later answer sentence may also lean
  on a sentence next to an earlier one's anchor).

Before that the whole text is read for degeneration: a repeated sentence or phrase, the question
echoed back with nothing added, or prompt markers ("Question:", "Context:", "<|…|>"). The first
reason found is reported, and the answer falls back to an extractive one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.text import STOPWORDS, content_words, split_sentences

# Reasons, as reported in ``grounding.reason``.
EMPTY = "empty"
PROMPT_MARKERS = "prompt_markers"
REPETITION = "repetition"
ECHOES_QUESTION = "echoes_question"
MISSING_FACTS = "missing_facts"
FACTS_APART = "facts_apart"
LOW_OVERLAP = "low_overlap"
LOW_SIMILARITY = "low_similarity"
NOT_AN_ANSWER = "support_does_not_answer"
NO_SUPPORT = "no_support"

_MARKER = re.compile(
    r"(?:^|\s)(?:question|context|answer|user|assistant|system)\s*:|<\|[^|]*\|>|\[/?INST\]|</?s>",
    re.IGNORECASE,
)
# Numbers with their decimal or thousands separators ("5.99", "1,000", "2.4"); a phone number
# or a range falls apart into its digit groups, each of which must be found.
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# Letters and digits in one token: E3, HT250, v2, CR2477, 5GHz.
_CODE = re.compile(r"\b(?=[a-z]*\d)(?=\d*[a-z])[a-z0-9]+\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z'’\-]*")
_NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}
_NUMBER_WORDS |= {"thirty": "30", "forty": "40", "fifty": "50", "hundred": "100", "once": "1"}
_NUMBER_WORDS |= {"twice": "2", "single": "1", "double": "2", "dozen": "12", "half": "0.5"}
# Clauses: facts stated together must be found together. Parentheses, separators and the
# conjunctions that join two statements split them.
# (Not parentheses: "the Halo Pro (model HT-250) sells for $229" is one statement.)
_CLAUSE = re.compile(r"[,;:]|\s(?:and|but|or|while|whereas|although|though)\s", re.IGNORECASE)
# A number with its unit is one fact: "$34 per year" is not "$34 a month", "40 mm" not "40 m".
_UNITS = {
    **dict.fromkeys(("second", "minute", "hour", "day", "week", "month", "year")),
    **dict.fromkeys(("percent", "degree", "°f", "°c", "volt", "watt", "amp")),
    **dict.fromkeys(("mm", "cm", "km", "meter", "inch", "foot", "ft", "mile")),
    **dict.fromkeys(("kg", "gram", "lb", "pound", "ounce", "oz", "gb", "mb", "tb", "ghz", "mhz")),
    "%": "percent",
    "feet": "foot",
    "metre": "meter",
    "inche": "inch",
}
_NUMBER_UNIT = re.compile(
    r"(\d+(?:[.,]\d+)*)\s*-?\s*(?:(?:per|a|an|each|every|/)\s*)?"
    r"(%|°[fc]|[a-z]+)",
    re.IGNORECASE,
)
# Repetition: a phrase of this many words that occurs this often is a loop, not an answer.
_LOOP_NGRAM = 3
_LOOP_COUNT = 3


def _number(token: str) -> str:
    # "1,000" and "1000" are one number; "5.99" keeps its point; "3.0" is "3".
    token = re.sub(r",(?=\d{3}\b)", "", token)
    if "." in token:
        token = token.rstrip("0").rstrip(".") or "0"
    return token


def facts(text: str, *, skip_first_word: bool = True) -> set[str]:
    """Return the numbers, codes and names a sentence states, normalized for comparison.

    A capitalized word counts as a name unless it starts the sentence (where every word is
    capitalized) or is a stop word; number words count as their digits ("six" is "6").
    """
    found: set[str] = set()
    lowered = text.lower()
    found |= _number_units(lowered)
    found |= {_number(m) for m in _NUMBER.findall(lowered)}
    found |= {m for m in _CODE.findall(lowered) if not m.isdigit()}
    words = _WORD.findall(text)
    for position, word in enumerate(words):
        plain = word.lower().strip("'’-").removesuffix("'s").removesuffix("’s")
        if plain in _NUMBER_WORDS:
            found.add(_NUMBER_WORDS[plain])
            continue
        if position == 0 and skip_first_word:
            continue
        if word[0].isupper() and plain not in STOPWORDS and plain not in {"i", "a"}:
            found |= {part for part in re.split(r"[-’']", plain) if part}
    return found


def _number_units(lowered: str) -> set[str]:
    found = set()
    for number, word in _NUMBER_UNIT.findall(lowered):
        unit = word if word in _UNITS else word.removesuffix("s")
        if unit in _UNITS:
            found.add(f"{_number(number)} {_UNITS[unit] or unit}")
    return found


def clauses(text: str) -> list[str]:
    """Split a sentence into the clauses whose facts belong together."""
    return [c.strip() for c in _CLAUSE.split(text) if c and c.strip()]


def _apart(part: str, support: str) -> set[str]:
    """Return the facts of a clause of ``part`` that no one clause of ``support`` holds."""
    support_clauses = [_mentions(c) for c in clauses(support)] or [set()]
    for position, clause in enumerate(clauses(part)):
        # The answer's first word is only skipped where it starts the sentence.
        stated = facts(clause, skip_first_word=position == 0)
        if stated and not any(stated <= held for held in support_clauses):
            best = max(support_clauses, key=lambda held: len(stated & held))
            return stated - best
    return set()


def _mentions(text: str) -> set[str]:
    """Return every fact-like token of a snippet sentence: all its words, digits and codes."""
    lowered = text.lower()
    tokens = {_number(m) for m in _NUMBER.findall(lowered)} | _number_units(lowered)
    tokens |= set(_CODE.findall(lowered))
    for word in _WORD.findall(lowered):
        plain = word.strip("'’-").removesuffix("'s").removesuffix("’s")
        tokens |= {part for part in re.split(r"[-’']", plain) if part}
        if plain in _NUMBER_WORDS:
            tokens.add(_NUMBER_WORDS[plain])
    return tokens


@dataclass(frozen=True)
class SnippetSentence:
    """One sentence of a context snippet, with how well it answers the question."""

    source: int  # which snippet
    position: int  # which sentence of it
    text: str
    rank: int  # 0 is the sentence the extractor would quote first


@dataclass
class SentenceCheck:
    text: str
    supported: bool
    reason: str | None = None
    support: str | None = None
    missing: list[str] = field(default_factory=list)
    overlap: float = 0.0
    similarity: float = 0.0
    anchor: int | None = None  # index of the snippet sentence that backs it most
    rank: int | None = None  # the extractor's rank of that sentence (0: it would quote it)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "text": self.text,
            "supported": self.supported,
            "overlap": round(self.overlap, 4),
            "similarity": round(self.similarity, 4),
        }
        if self.reason:
            body["reason"] = self.reason
        if self.support is not None:
            body["support"] = self.support
            body["support_rank"] = self.rank
        if self.missing:
            body["missing"] = sorted(self.missing)
        return body


@dataclass
class Verdict:
    """The grounding check's answer: supported or not, why, and each sentence's findings."""

    supported: bool
    reason: str | None
    sentences: list[SentenceCheck] = field(default_factory=list)

    @property
    def overlap(self) -> float:
        return min((s.overlap for s in self.sentences), default=0.0)

    @property
    def similarity(self) -> float:
        return min((s.similarity for s in self.sentences), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "supported": self.supported,
            "reason": self.reason,
            "overlap": round(self.overlap, 4),
            "similarity": round(self.similarity, 4),
            "sentences": [s.to_dict() for s in self.sentences],
        }


@dataclass(frozen=True)
class GroundingSettings:
    min_overlap: float = 0.6
    min_similarity: float = 0.5
    top_sentences: int = 2


def degeneration(answer: str, question: str) -> str | None:
    """Return why the text is not an answer at all (loops, echo, prompt markers), or None."""
    if not content_words(answer):
        return EMPTY
    if _MARKER.search(answer):
        return PROMPT_MARKERS
    normalized = [" ".join(sorted(content_words(s))) for s in split_sentences(answer)]
    normalized = [s for s in normalized if s]
    if len(set(normalized)) < len(normalized):
        return REPETITION
    words = re.findall(r"[a-z0-9$.,%]+", answer.lower())
    grams = Counter(tuple(words[i : i + _LOOP_NGRAM]) for i in range(len(words) - _LOOP_NGRAM + 1))
    if grams and max(grams.values()) >= _LOOP_COUNT:
        return REPETITION
    if content_words(answer) <= content_words(question):
        return ECHOES_QUESTION
    return None


def check(
    answer: str,
    question: str,
    sentences: Sequence[SnippetSentence],
    embed: Callable[[Sequence[str]], np.ndarray] | None,
    settings: GroundingSettings,
) -> Verdict:
    """Check every sentence of ``answer`` against the ranked snippet sentences.

    ``embed`` gives unit vectors; without it (the retriever is down) only sentences that repeat
    a snippet sentence nearly word for word (overlap ≥ 0.9) count as supported.
    """
    answer = answer.strip()
    reason = degeneration(answer, question)
    if reason is not None:
        return Verdict(False, reason)
    parts = split_sentences(answer)
    if not sentences:
        return Verdict(False, NO_SUPPORT, [SentenceCheck(p, False, NO_SUPPORT) for p in parts])
    similarity = _similarities(parts, sentences, embed)
    by_place = {(s.source, s.position): i for i, s in enumerate(sentences)}
    answering = {i for i, s in enumerate(sentences) if s.rank < settings.top_sentences}
    checks: list[SentenceCheck] = []
    for row, part in enumerate(parts):
        result = _check_sentence(part, row, sentences, by_place, similarity, settings, answering)
        checks.append(result)
        if result.supported and result.anchor is not None:
            # A following answer sentence may continue from its neighbour ("It also …").
            anchor = sentences[result.anchor]
            for step in (-1, 1):
                near = by_place.get((anchor.source, anchor.position + step))
                if near is not None:
                    answering.add(near)
    failed = next((c for c in checks if not c.supported), None)
    return Verdict(failed is None, failed.reason if failed else None, checks)


def _similarities(
    parts: Sequence[str],
    sentences: Sequence[SnippetSentence],
    embed: Callable[[Sequence[str]], np.ndarray] | None,
) -> np.ndarray | None:
    if embed is None:
        return None
    vectors = embed([*parts, *(s.text for s in sentences)])
    return vectors[: len(parts)] @ vectors[len(parts) :].T


def _check_sentence(
    part: str,
    row: int,
    sentences: Sequence[SnippetSentence],
    by_place: dict[tuple[int, int], int],
    similarity: np.ndarray | None,
    settings: GroundingSettings,
    answering: set[int],
) -> SentenceCheck:
    words = content_words(part)
    stated = facts(part)
    best: SentenceCheck | None = None
    for index, sentence in enumerate(sentences):
        # The window: this sentence, alone or with the next one of the same snippet.
        following = by_place.get((sentence.source, sentence.position + 1))
        for window in ([index], [index, following] if following is not None else None):
            if window is None:
                continue
            candidate = _judge(part, words, stated, window, sentences, similarity, row, settings)
            if candidate.supported and candidate.anchor not in answering:
                candidate.supported, candidate.reason = False, NOT_AN_ANSWER
            if candidate.supported:
                return candidate
            if best is None or _closeness(candidate) > _closeness(best):
                best = candidate
    assert best is not None
    return best


def _anchor(words: set[str], window: list[int], sentences: Sequence[SnippetSentence]) -> int:
    return max(window, key=lambda i: (len(words & content_words(sentences[i].text)), -i))


def _judge(
    part: str,
    words: set[str],
    stated: set[str],
    window: list[int],
    sentences: Sequence[SnippetSentence],
    similarity: np.ndarray | None,
    row: int,
    settings: GroundingSettings,
) -> SentenceCheck:
    anchor = _anchor(words, window, sentences)
    window_words = set().union(*(content_words(sentences[i].text) for i in window))
    overlap = len(words & window_words) / len(words) if words else 0.0
    missing = stated - _mentions(sentences[anchor].text)
    support = sentences[anchor].text
    if similarity is None:
        close = 0.0
        similar = overlap >= 0.9
    else:
        close = float(max(similarity[row, i] for i in window))
        similar = close >= settings.min_similarity
    result = SentenceCheck(
        part,
        False,
        support=support,
        missing=sorted(missing),
        overlap=overlap,
        similarity=close,
        anchor=anchor,
        rank=sentences[anchor].rank,
    )
    apart = _apart(part, support) if not missing else set()
    if missing:
        result.reason = MISSING_FACTS
    elif apart:
        result.reason, result.missing = FACTS_APART, sorted(apart)
    elif overlap < settings.min_overlap:
        result.reason = LOW_OVERLAP
    elif not similar:
        result.reason = LOW_SIMILARITY
    else:
        result.supported = True
    return result


def _closeness(check: SentenceCheck) -> tuple[int, float, float]:
    # The nearest miss explains the verdict best: fewest missing facts, then most overlap.
    return (-len(check.missing), check.overlap, check.similarity)
