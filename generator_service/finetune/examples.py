"""Training examples in the service's own prompt: the served template, the served trimming.

An example is the prompt the generator would build for the question and its snippets,
followed by the target: the reference answer, or the service's decline sentence for a
refusal, then the token that ends the model's turn. Only the target's tokens are learned.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from generator_service.errors import PromptTooLong
from generator_service.finetune.contexts import Grounded
from generator_service.model import TURN_MARKERS, HFTokenCounter
from generator_service.prompt import PromptBuilder
from qa_common.answer_texts import DECLINE_TEXT

# Label of a token whose prediction is not learned (PyTorch's cross-entropy ignore index).
IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One question, its snippets, and what the model should write."""

    kind: Literal["answer", "refusal"]
    record_id: str
    question: str
    snippets: tuple[str, ...]
    target: str


@dataclass(frozen=True)
class Encoded:
    """An example as token ids, the prompt's labels masked."""

    example: Example
    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE)


def build_examples(
    grounded: Sequence[Grounded], refusals: Sequence[tuple[Grounded, tuple[str, ...]]]
) -> list[Example]:
    """Turn grounded records and refusal pairings into examples."""
    examples = []
    for item in grounded:
        record = item.record
        kind: Literal["answer", "refusal"] = "answer" if record.answer else "refusal"
        target = record.answer or DECLINE_TEXT
        examples.append(Example(kind, record.id, record.question, item.snippets, target))
    for item, snippets in refusals:
        record = item.record
        examples.append(Example("refusal", record.id, record.question, snippets, DECLINE_TEXT))
    return examples


def split_examples(
    examples: Sequence[Example], eval_share: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out a seeded share of the questions; a question's examples stay on one side."""
    questions = sorted(
        {e.record_id for e in examples},
        key=lambda rid: hashlib.sha256(f"{seed}:{rid}".encode()).hexdigest(),
    )
    count = round(eval_share * len(questions))
    if eval_share > 0 and len(questions) > 1:
        count = min(max(count, 1), len(questions) - 1)  # one of each, at least
    held = set(questions[:count])
    train = [e for e in examples if e.record_id not in held]
    return train, [e for e in examples if e.record_id in held]


def end_of_turn_id(tokenizer: object) -> int:
    """Return the token that ends the model's turn: the chat template's marker, else EOS."""
    template = getattr(tokenizer, "chat_template", None) or ""
    vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    for marker in TURN_MARKERS:
        if marker in template and marker in vocab:
            return int(vocab[marker])
    return int(tokenizer.eos_token_id)  # type: ignore[attr-defined]


class ExampleEncoder:
    """Render examples through the served prompt builder and tokenize them."""

    def __init__(
        self, builder: PromptBuilder, counter: HFTokenCounter, end_id: int, max_tokens: int
    ) -> None:
        self.builder = builder
        self.counter = counter
        self.end_id = end_id
        self.max_tokens = max_tokens

    def prompt_text(self, example: Example, max_new_tokens: int) -> str:
        """Return the prompt the service would build, leaving room for the answer."""
        return self.builder.build(
            example.question, example.snippets, max_new_tokens=max_new_tokens
        ).text

    def encode(self, example: Example) -> Encoded | None:
        """Return the example's tokens, or None when even the question and answer cannot fit."""
        target = [*self.counter.encode(example.target), self.end_id]
        if len(target) >= self.max_tokens:
            return None
        try:
            # Served prompts keep room for max_new_tokens; here the answer's own length.
            prompt = self.counter.encode(self.prompt_text(example, len(target)))
        except PromptTooLong:
            return None
        if len(prompt) + len(target) > self.max_tokens:
            return None
        return Encoded(example, prompt + target, [IGNORE] * len(prompt) + target)
