"""Find the snippets of each training question: its own ``context``, or the gateway's.

The gateway's ``POST /v1/context`` runs the retrieval of ``/v1/ask`` and returns the body it
would send the generator, so the model is trained on the snippets it will be served with.
Services never import each other: this is an HTTP client like any other.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from generator_service.finetune.data import DataError, QARecord
from qa_common.http_client import ServiceClient

# An answer counts as present in snippets holding this share of its words: refusal examples
# must not pair a question with snippets that answer it in other words.
_MAX_ANSWER_WORDS_PRESENT = 0.5
_WORD = re.compile(r"\w+", re.UNICODE)


class GatewayContextClient(ServiceClient):
    """Asks a running gateway for a question's snippets, as /v1/ask would use them."""

    def __init__(self, url: str, api_key: str | None = None, *, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        super().__init__(
            "gateway", url, connect_timeout_s=5.0, read_timeout_s=timeout_s, headers=headers
        )

    def context(
        self, question: str, *, top_k: int | None = None, collection: str | None = None
    ) -> dict[str, Any]:
        """Return the gateway's /v1/context answer for one question."""
        body: dict[str, Any] = {"question": question}
        if top_k:
            body["top_k"] = top_k
        if collection:
            body["collection"] = collection
        return self.request_json("POST", "/v1/context", json=body)


@dataclass(frozen=True)
class Grounded:
    """A record with the snippets its prompt gets, and where they came from."""

    record: QARecord
    snippets: tuple[str, ...]
    # Ids of the documents the snippets came from (gateway only): refusals avoid them.
    documents: frozenset[str]
    origin: str  # "context" or "gateway"
    # False when the gateway's no-answer gate would refuse before any generation.
    answerable: bool = True


def ground_records(
    records: Sequence[QARecord],
    client: GatewayContextClient | None,
    *,
    top_k: int | None = None,
    collection: str | None = None,
    on_progress: Callable[[], None] | None = None,
) -> list[Grounded]:
    """Attach snippets to every record; a record without context needs the gateway."""
    grounded = []
    for record in records:
        if record.context:
            grounded.append(Grounded(record, record.context, frozenset(), "context"))
        elif client is None:
            raise DataError(
                record.file,
                "no 'context' given, and no --gateway to retrieve the snippets from",
                record.row,
            )
        else:
            found = client.context(record.question, top_k=top_k, collection=collection)
            snippets = tuple(found["generation"]["snippets"])
            documents = frozenset(str(s["document_id"]) for s in found.get("sources", []))
            grounded.append(
                Grounded(record, snippets, documents, "gateway", bool(found.get("answerable")))
            )
            if on_progress is not None:
                on_progress()
    return grounded


def words(text: str) -> set[str]:
    """Return the lower-cased words of a text."""
    return {w.lower() for w in _WORD.findall(text)}


def holds_answer(snippets: Sequence[str], answer: str) -> bool:
    """Tell whether the snippets contain the answer, verbatim or most of its words."""
    joined = " ".join(" ".join(snippets).split()).lower()
    if " ".join(answer.split()).lower().rstrip(".") in joined:
        return True
    answer_words = words(answer)
    if not answer_words:
        return False
    present = len(answer_words & words(joined)) / len(answer_words)
    return present >= _MAX_ANSWER_WORDS_PRESENT


def refusal_snippets(
    grounded: Sequence[Grounded], share: float, seed: int
) -> list[tuple[Grounded, tuple[str, ...]]]:
    """Pair a seeded share of the answerable questions with snippets that do not answer them.

    The snippets are another question's, from other documents when the gateway said which,
    and never ones that hold the answer: the model must learn to decline only when the
    answer is truly absent.
    """
    answerable = [g for g in grounded if g.record.answer is not None and g.snippets]
    count = round(share * len(answerable))
    if count <= 0 or len(answerable) < 2:
        return []
    rng = random.Random(f"refusals-{seed}")  # noqa: S311 - a seeded sample, not a secret
    chosen = rng.sample(answerable, min(count, len(answerable)))
    pairs = []
    for item in chosen:
        donors = [g for g in answerable if g is not item]
        rng.shuffle(donors)
        for donor in donors:
            if item.documents & donor.documents:
                continue
            if holds_answer(donor.snippets, item.record.answer or ""):
                continue
            pairs.append((item, donor.snippets))
            break
    return pairs
