"""Turn a question into an answer: retrieve, generate, check grounding, or extract.

The modes, in the order they are tried:
- ``no_answer``: the question's relevance to the best snippets is below
  ``NO_ANSWER_MIN_RELEVANCE``; say the documents do not cover the question rather than guess
  (the closest sources are still listed). Relevance is the best cosine score plus
  ``NO_ANSWER_LEXICAL_WEIGHT`` times the share of the question's content words found in the
  top snippets: cosine alone cannot tell "about a neighbouring topic" from "about this", and the
  shared words (names, numbers, terms) can (docs/benchmarks.md has the measurements).
- ``generated``: the generator's text, returned only when the snippets support it sentence by
  sentence, facts included, from sentences that answer the question (``gateway/grounding.py``).
- ``extractive``: the snippet sentence(s) that best answer the question; used when the
  generated text is unsupported, or the generator is down, overloaded or slow (``degraded``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from gateway import gate, grounding
from gateway.clients import GeneratorClient, RetrieverClient
from gateway.config import GatewayConfig
from gateway.grounding import GroundingSettings, SnippetSentence
from gateway.text import content_words, overlap, split_sentences, term_weights, weighted_overlap
from qa_common.answer_texts import DECLINE_TEXT, NO_ANSWER_TEXT, is_decline
from qa_common.errors import (
    DependencyError,
    DependencyTimeout,
    DependencyUnavailable,
    Overloaded,
    ServiceError,
)
from qa_common.http_client import ConnectionLost

log = logging.getLogger(__name__)

# Snippet sentences considered for an extractive answer, at most.
_MAX_CANDIDATE_SENTENCES = 64
# How much the retrieval score of the sentence's snippet adds to a sentence's semantic
# similarity to the question (the shared words add EXTRACTIVE_LEXICAL_WEIGHT times their share).
_SOURCE_WEIGHT = 0.3
# The best sentence is followed by the next one unless it is this long already: answers often
# span two sentences ("They beat the Steelers. Then they beat the Patriots, 20-18.").
_FOLLOWING_SENTENCE_MAX_WORDS = 40
# A question is read as a follow-up only if this share of its own content words occurs in the
# snippets found with the previous question in front.
_FOLLOW_UP_MIN_OWN_WORDS = 0.5


@dataclass(frozen=True)
class Source:
    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        page = self.metadata.get("page")
        section = self.metadata.get("section")
        return {
            "document_id": self.document_id,
            "chunk_id": self.chunk_id,
            "text": self.text,
            "score": self.score,
            # Where it came from, for a citation: "manual.pdf · page 12 · Wiring".
            "source": str(self.metadata.get("source") or self.document_id),
            "title": str(self.metadata["title"]) if self.metadata.get("title") else None,
            "page": int(page) if isinstance(page, int | float) else None,
            "section": str(section) if section else None,
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Turn:
    role: str
    text: str


@dataclass
class Answer:
    text: str
    mode: str
    sources: list[Source]
    degraded: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    grounding: dict[str, Any] | None = None
    relevance: float | None = None

    def to_dict(self, request_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "answer": self.text,
            "mode": self.mode,
            "sources": [s.to_dict() for s in self.sources],
        }
        if self.degraded:
            body["degraded"] = list(self.degraded)
        if self.relevance is not None:
            body["relevance"] = round(self.relevance, 4)
        if self.grounding is not None:
            body["grounding"] = self.grounding
        body["timings_ms"] = {k: round(v, 2) for k, v in self.timings_ms.items()}
        body["request_id"] = request_id
        return body


def gate_settings(config: GatewayConfig) -> gate.GateSettings:
    """Return the no-answer gate the configuration asks for."""
    return gate.GateSettings(
        lexical_weight=config.no_answer_lexical_weight,
        min_relevance=config.no_answer_min_relevance,
        idf_weighted=config.no_answer_idf_weighted,
        rare_min_idf=0.0 if config.no_answer_missing_name_penalty else None,
        missing_rare_penalty=config.no_answer_missing_name_penalty,
        rare_names_only=True,
    )


def contextual_question(question: str, history: Sequence[Turn]) -> str:
    """Prefix the previous user question, so that a follow-up names what it is about."""
    previous = next((t.text for t in reversed(history) if t.role == "user"), None)
    return f"{previous} {question}" if previous else question


def degraded_reason(error: ServiceError) -> str:
    """Name why the generator could not answer, for the ``degraded`` list."""
    # Past the deadline here, or past the deadline it was sent (its own 504).
    status = (error.details or {}).get("status") if isinstance(error, DependencyError) else None
    if isinstance(error, DependencyTimeout) or status == 504:
        return "generator_timeout"
    # Refused, or gone in the middle of the call (its process died): unavailable either way.
    if isinstance(error, DependencyUnavailable | ConnectionLost):
        return "generator_unavailable"
    if isinstance(error, Overloaded):
        return "generator_overloaded"
    if status == 503:
        return "generator_unavailable"
    return "generator_error"


class _Clock:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._started = time.perf_counter()

    def lap(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + (now - since) * 1000
        return now

    def total(self) -> dict[str, float]:
        self.timings["total"] = (time.perf_counter() - self._started) * 1000
        return self.timings


class Retrieved(NamedTuple):
    """The sources found for a question, their relevance, the query, and its terms' IDF."""

    sources: list[Source]
    relevance: float
    query: str
    term_weights: dict[str, float]


class _Found(NamedTuple):
    """One search's sources and what the retriever said about the query's terms."""

    sources: list[Source]
    query_terms: list[dict[str, Any]]
    collection_chunks: int | None


@dataclass(frozen=True)
class _Retrieval:
    """What answering a question starts from: the sources and how relevant they are."""

    clock: _Clock
    started: float
    history: list[Turn]
    retrieved: Retrieved


class Answerer:
    """The /v1/ask pipeline over a retriever and a generator client."""

    def __init__(
        self, retriever: RetrieverClient, generator: GeneratorClient, config: GatewayConfig
    ) -> None:
        self.retriever = retriever
        self.generator = generator
        self.config = config
        self.gate = gate_settings(config)
        # Told of every answer given (the app counts them by mode for /metrics).
        self.on_answer: Callable[[Answer], None] = lambda _answer: None

    def _observed(self, answer: Answer) -> Answer:
        self.on_answer(answer)
        return answer

    # -- retrieval ----------------------------------------------------------------------------

    def _search(self, query: str, top_k: int, collection: str | None) -> _Found:
        response = self.retriever.search(query, top_k, collection)
        sources = [
            Source(
                document_id=hit["document_id"],
                chunk_id=hit["chunk_id"],
                text=hit["text"],
                score=float(hit["score"]),
                metadata=hit.get("metadata") or {},
            )
            for hit in response["results"]
        ]
        return _Found(sources, response.get("query_terms") or [], response.get("collection_chunks"))

    def relevance(self, question: str, found: _Found) -> float:
        """Score how well the found snippets cover the question (``gateway/gate.py``)."""
        return gate.relevance(
            question, found.sources, found.query_terms, found.collection_chunks, self.gate
        )

    def retrieve(
        self, question: str, history: Sequence[Turn], top_k: int, collection: str | None = None
    ) -> Retrieved:
        """Find the sources for a question: them, their relevance, the query used, its term IDFs.

        "And how much does it cost?" names nothing; read after the previous user question it
        finds its snippet. So a question asked after others is also searched with the previous
        question in front, and that reading wins when it is more relevant, but only while the
        question's own words occur in what it found: "What is the capital of Mongolia?" after a
        question about batteries is a new topic, not a follow-up, whatever the battery snippets
        score.
        """
        found = self._search(question, top_k, collection)
        score = self.relevance(question, found)
        own = Retrieved(found.sources, score, question, term_weights(found.query_terms))
        contextual = contextual_question(question, history)
        if contextual == question:
            return own
        read_after = self._search(contextual, top_k, collection)
        own_words = content_words(question)
        covered = set().union(
            *(content_words(s.text) for s in read_after.sources[: gate.RELEVANCE_SNIPPETS])
        )
        is_follow_up = overlap(own_words, covered) >= _FOLLOW_UP_MIN_OWN_WORDS
        contextual_score = self.relevance(contextual, read_after)
        if is_follow_up and contextual_score > score:
            weights = term_weights(read_after.query_terms)
            return Retrieved(read_after.sources, contextual_score, contextual, weights)
        return own

    # -- answering ----------------------------------------------------------------------------

    def context(
        self,
        question: str,
        *,
        history: Sequence[Turn] = (),
        top_k: int | None = None,
        collection: str | None = None,
    ) -> dict[str, Any]:
        """Retrieve as /v1/ask does and return what the generator would be sent, unsent."""
        found = self._begin(question, history, top_k, collection)
        sources, score, query, _ = found.retrieved
        return {
            "question": question,
            "query": query,
            "relevance": round(score, 4),
            "answerable": score >= self.config.no_answer_min_relevance,
            "generation": self._generation_request(question, sources, found.history),
            "sources": [s.to_dict() for s in sources],
            "no_answer_text": NO_ANSWER_TEXT,
            "decline_text": DECLINE_TEXT,
            "timings_ms": {k: round(v, 2) for k, v in found.clock.total().items()},
        }

    def _generation_request(
        self, question: str, sources: Sequence[Source], history: Sequence[Turn]
    ) -> dict[str, Any]:
        return {
            "question": question,
            "snippets": [s.text for s in sources[: self.config.context_snippets]],
            "history": [{"role": t.role, "text": t.text} for t in history],
            **self._deadline(),
        }

    def _deadline(self) -> dict[str, float]:
        """Tell the generator when the gateway stops waiting, so that it stops writing too."""
        # Half a second early: the answer must still travel back before the read timeout.
        return {"timeout_s": max(1.0, self.config.generator_read_timeout_s - 0.5)}

    def _begin(
        self, question: str, history: Sequence[Turn], top_k: int | None, collection: str | None
    ) -> _Retrieval:
        clock = _Clock()
        started = time.perf_counter()
        history = list(history)[-self.config.max_history_turns :] if history else []
        found = self.retrieve(question, history, top_k or self.config.default_top_k, collection)
        return _Retrieval(clock, clock.lap("retrieve", started), history, found)

    def _no_answer(self, found: _Retrieval) -> Answer | None:
        if found.retrieved.relevance >= self.config.no_answer_min_relevance:
            return None
        return Answer(
            NO_ANSWER_TEXT,
            "no_answer",
            found.retrieved.sources,
            timings_ms=found.clock.total(),
            relevance=found.retrieved.relevance,
        )

    def answer(
        self,
        question: str,
        *,
        history: Sequence[Turn] = (),
        top_k: int | None = None,
        collection: str | None = None,
    ) -> Answer:
        """Answer a question in one piece."""
        found = self._begin(question, history, top_k, collection)
        clock, started, history = found.clock, found.started, found.history
        sources, score, query, term_weights = found.retrieved
        refusal = self._no_answer(found)
        if refusal is not None:
            return self._observed(refusal)
        degraded: list[str] = []
        generated: str | None = None
        try:
            result = self.generator.generate(self._generation_request(question, sources, history))
            generated = str(result.get("answer", ""))
        except ServiceError as exc:
            log.warning("generator failed (%s): answering extractively", exc.message)
            degraded.append(degraded_reason(exc))
        started = clock.lap("generate", started)
        answer = self._finish(
            question, query, sources, generated, degraded, clock, started, term_weights
        )
        answer.relevance = score
        return self._observed(answer)

    def answer_stream(
        self,
        question: str,
        *,
        history: Sequence[Turn] = (),
        top_k: int | None = None,
        collection: str | None = None,
    ) -> tuple[list[Source], Iterator[tuple[str, dict[str, Any]]]]:
        """Retrieve now (so its errors are ordinary responses), then stream the answer."""
        found = self._begin(question, history, top_k, collection)
        clock, started, history = found.clock, found.started, found.history
        sources, score, query, term_weights = found.retrieved

        def events() -> Iterator[tuple[str, dict[str, Any]]]:
            yield "sources", {"sources": [s.to_dict() for s in sources]}
            refusal = self._no_answer(found)
            if refusal is not None:
                yield "done", _final(self._observed(refusal))
                return
            degraded: list[str] = []
            pieces: list[str] = []
            generated: str | None = None
            began = started
            # Ranked before the first token: each finished sentence is checked as it arrives.
            ranking = self._ranking(question, query, sources, term_weights)
            shown = 0  # sentences of the generated text already sent, each one checked
            stream = self.generator.stream(self._generation_request(question, sources, history))
            try:
                for event in stream:
                    if event.event == "token":
                        pieces.append(str(event.data.get("text", "")))
                        finished = split_sentences("".join(pieces))[:-1]
                        if len(finished) <= shown:
                            continue
                        if not self._holds(finished, question, ranking):
                            # Set aside: stop writing; the extractive answer comes with done.
                            generated = "".join(pieces)
                            break
                        yield "token", {"text": " ".join(finished[shown:]) + " "}
                        shown = len(finished)
                    elif event.event == "done":
                        generated = str(event.data.get("answer", "".join(pieces)))
            except ServiceError as exc:
                log.warning("generator stream failed (%s): answering extractively", exc.message)
                degraded.append(degraded_reason(exc))
                generated = None
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            began = clock.lap("generate", began)
            answer = self._finish(
                question, query, sources, generated, degraded, clock, began, term_weights, ranking
            )
            answer.relevance = score
            if answer.mode == "generated":
                rest = split_sentences(answer.text)[shown:]
                if rest:
                    yield "token", {"text": " ".join(rest)}
            yield "done", _final(self._observed(answer))

        return sources, events()

    def _finish(
        self,
        question: str,
        query: str,
        sources: list[Source],
        generated: str | None,
        degraded: list[str],
        clock: _Clock,
        started: float,
        term_weights: dict[str, float] | None = None,
        ranking: _Ranking | None = None,
    ) -> Answer:
        if generated is not None and self.config.honor_generator_decline and is_decline(generated):
            # A model fine-tuned to decline (generator_service.finetune) says so in these words.
            clock.lap("ground", started)
            return Answer(NO_ANSWER_TEXT, "no_answer", sources, degraded, clock.total(), _DECLINED)
        ranking = ranking or self._ranking(question, query, sources, term_weights)
        ranked, rank_degraded, embed = ranking
        verdict: dict[str, Any] | None = None
        if generated is not None and generated.strip():
            verdict, grounding_degraded = self.grounding(generated, question, ranked, embed)
            degraded += grounding_degraded
            started = clock.lap("ground", started)
            if verdict["supported"]:
                return Answer(
                    generated.strip(), "generated", sources, degraded, clock.total(), verdict
                )
        text = self.quote(ranked)
        # Reported only for a quoted answer: a generated one says grounding_check_unavailable.
        degraded += [d for d in rank_degraded if d not in degraded]
        clock.lap("extract", started)
        return Answer(text, "extractive", sources, degraded, clock.total(), verdict)

    # -- grounding and extraction -------------------------------------------------------------

    def _ranking(
        self,
        question: str,
        query: str,
        sources: Sequence[Source],
        term_weights: dict[str, float] | None,
    ) -> _Ranking:
        context = sources[: self.config.context_snippets]
        # Grounding and extraction look at the same snippet sentences: embed each once.
        embed = _EmbeddingMemo(self.retriever)
        ranked, degraded = self.rank_sentences(question, query, context, embed, term_weights)
        return _Ranking(ranked, degraded, embed)

    def _holds(self, sentences: Sequence[str], question: str, ranking: _Ranking) -> bool:
        """Check the finished sentences of a stream so far, as the whole answer will be."""
        verdict, _ = self.grounding(" ".join(sentences), question, ranking.ranked, ranking.embed)
        return bool(verdict["supported"])

    def grounding(
        self,
        generated: str,
        question: str,
        ranked: Sequence[SnippetSentence],
        embed: _EmbeddingMemo | None = None,
    ) -> tuple[dict[str, Any], list[str]]:
        """Check a generated answer sentence by sentence against the ranked snippet sentences."""
        settings = GroundingSettings(
            min_overlap=self.config.grounding_min_overlap,
            min_similarity=self.config.grounding_min_similarity,
            top_sentences=self.config.grounding_top_sentences,
        )
        memo = embed or _EmbeddingMemo(self.retriever)
        try:
            verdict = grounding.check(generated, question, ranked, memo, settings)
            return verdict.to_dict(), []
        except ServiceError as exc:
            # Without embeddings, trust only sentences repeated nearly word for word.
            log.warning("embedding for the grounding check failed: %s", exc.message)
            verdict = grounding.check(generated, question, ranked, None, settings)
            return verdict.to_dict(), ["grounding_check_unavailable"]

    def rank_sentences(
        self,
        question: str,
        query: str,
        sources: Sequence[Source],
        embed: _EmbeddingMemo | None = None,
        term_weights: dict[str, float] | None = None,
    ) -> tuple[list[SnippetSentence], list[str]]:
        """Rank the snippets' sentences by how well they answer the question (0 is best).

        The question's words count by their rarity in the collection when the retriever says
        it (``term_weights``): "E3" in "why does my thermostat show error E3?" weighs more than
        "thermostat", so the E3 line wins over the E6 line that embeds almost alike. A
        follow-up ("and can I share it?") is searched with the question before it (``query``),
        but its sentence is picked by its own words first: the meaning of both, the words of
        the follow-up.
        """
        candidates: list[tuple[int, int, str]] = []  # (source index, sentence index, text)
        for si, source in enumerate(sources):
            for ti, sentence in enumerate(split_sentences(source.text)):
                candidates.append((si, ti, sentence))
        answerable = [c for c in candidates if _is_statement(c[2])] or candidates
        answerable = answerable[:_MAX_CANDIDATE_SENTENCES]
        if not answerable:
            return [], []
        question_words = content_words(question)
        lexical = np.array(
            [
                weighted_overlap(question_words, content_words(c[2]), term_weights or {})
                for c in answerable
            ],
            dtype=np.float32,
        )
        degraded: list[str] = []
        asked = list(dict.fromkeys([question, query]))
        try:
            vectors = (embed or _EmbeddingMemo(self.retriever))(
                [*asked, *(c[2] for c in answerable)]
            )
            semantic = (vectors[len(asked) :] @ vectors[: len(asked)].T).mean(axis=1)
        except ServiceError as exc:
            log.warning("embedding for extraction failed: %s; using word overlap", exc.message)
            semantic = np.zeros(len(answerable), dtype=np.float32)
            degraded.append("extraction_lexical_only")
        # A sentence from a snippet that matched the question better is likelier the answer.
        source_score = np.array([sources[c[0]].score for c in answerable], dtype=np.float32)
        scores = (
            semantic
            + self.config.extractive_lexical_weight * lexical
            + _SOURCE_WEIGHT * source_score
        )
        order = np.argsort(-scores, kind="stable")
        rank = {int(i): r for r, i in enumerate(order)}
        ranked = [
            SnippetSentence(source=c[0], position=c[1], text=c[2], rank=rank[i])
            for i, c in enumerate(answerable)
        ]
        return ranked, degraded

    def quote(self, ranked: Sequence[SnippetSentence]) -> str:
        """Quote the best-ranked sentence, and the one after it while the answer is short."""
        if not ranked:
            return NO_ANSWER_TEXT
        best = min(ranked, key=lambda s: s.rank)
        chosen = [best]
        if self.config.extractive_max_sentences > 1:
            following = [
                s for s in ranked if s.source == best.source and s.position == best.position + 1
            ]
            if following and len(best.text.split()) < _FOLLOWING_SENTENCE_MAX_WORDS:
                chosen.append(following[0])
        return " ".join(s.text for s in chosen)

    def extract(
        self,
        question: str,
        sources: Sequence[Source],
        embed: _EmbeddingMemo | None = None,
        term_weights: dict[str, float] | None = None,
        query: str | None = None,
    ) -> tuple[str, list[str]]:
        """Pick the snippet sentence(s) that best answer the question."""
        ranked, degraded = self.rank_sentences(
            question, query or question, sources, embed, term_weights
        )
        return self.quote(ranked), degraded


class _Ranking(NamedTuple):
    """The snippet sentences ranked for a question, and the embeddings already made."""

    ranked: list[SnippetSentence]
    degraded: list[str]
    embed: _EmbeddingMemo


class _EmbeddingMemo:
    """Embed texts through the retriever, asking only for those not embedded yet."""

    def __init__(self, retriever: RetrieverClient) -> None:
        self._retriever = retriever
        self._vectors: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            for text, vector in zip(missing, self._retriever.embed(missing), strict=True):
                self._vectors[text] = np.asarray(vector, dtype=np.float32)
        return np.stack([self._vectors[t] for t in texts])


# The grounding report of an answer the generator declined to give.
_DECLINED: dict[str, Any] = {
    "supported": False,
    "reason": "declined",
    "overlap": 0.0,
    "similarity": 0.0,
    "sentences": [],
}


def _is_statement(sentence: str) -> bool:
    # FAQ chunks start with their question: repeating the question back is no answer.
    return not sentence.rstrip().endswith("?") and len(sentence.split()) >= 3


def _final(answer: Answer) -> dict[str, Any]:
    from qa_common.request_context import get_request_id

    return answer.to_dict(get_request_id())
