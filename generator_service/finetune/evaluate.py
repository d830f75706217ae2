"""Measure a model on held-out examples as the service would answer them.

Answers are written by the service's own batching engine from the served prompt, greedy, with
the served stop tokens, stop strings and loop breakers: what is measured is what users get.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from generator_service.config import GeneratorConfig
from generator_service.finetune.examples import Encoded, Example
from generator_service.finetune.train import mean_loss
from generator_service.generators import LocalGenerator
from generator_service.model import LoadedModel
from generator_service.pipeline import generator_prompt_builder, sampling_params
from qa_common.answer_texts import is_decline

# Long enough for any answer on a CPU; a stuck generation fails the run rather than hanging.
_GENERATION_TIMEOUT_S = 1800.0


def normalize(text: str) -> str:
    """Lower-case and collapse spaces; drop a final full stop (containment ignores both)."""
    return " ".join(text.split()).lower().rstrip(".")


def contains(output: str, reference: str) -> bool:
    """Tell whether the output contains the reference answer."""
    return normalize(reference) in normalize(output)


@dataclass
class EvalReport:
    """How a model does on held-out examples."""

    loss: float
    answers: int  # held-out answer examples written
    contained: int  # … whose output contains the reference answer
    refusals: int  # held-out refusal examples written
    declined: int  # … where the model wrote the decline sentence
    answers_declined: int  # answer examples the model wrongly declined
    seconds: float
    samples: list[dict[str, str]] = field(default_factory=list)

    @property
    def contained_share(self) -> float | None:
        return round(self.contained / self.answers, 4) if self.answers else None

    @property
    def declined_share(self) -> float | None:
        return round(self.declined / self.refusals, 4) if self.refusals else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["contained_share"] = self.contained_share
        out["declined_share"] = self.declined_share
        return out


def generate_answers(
    loaded: LoadedModel, config: GeneratorConfig, examples: Sequence[Example]
) -> list[str]:
    """Write the service's greedy answer to every example, batched as the service batches."""
    generator = LocalGenerator(
        loaded,
        max_batch_size=config.generator_max_batch_size,
        max_queue=len(examples) + 1,
        context_tokens=config.generator_context_tokens,
    )
    try:
        builder = generator_prompt_builder(generator, config)
        params = sampling_params(config, do_sample=False)
        deadline = time.monotonic() + _GENERATION_TIMEOUT_S
        handles = [
            generator.start(
                builder.build(e.question, e.snippets, max_new_tokens=params.max_new_tokens),
                params,
                deadline,
            )
            for e in examples
        ]
        return [handle.result().text.strip() for handle in handles]
    finally:
        generator.close()


def evaluate(
    loaded: LoadedModel,
    config: GeneratorConfig,
    encoded: Sequence[Encoded],
    *,
    pad_id: int,
    max_generated: int | None = None,
    samples: int = 5,
) -> EvalReport:
    """Return the held-out loss, and how the served answers compare with the references."""
    started = time.perf_counter()
    loss = mean_loss(loaded.model, encoded, pad_id, loaded.device)
    chosen = [e.example for e in encoded][: max_generated or None]
    outputs = generate_answers(loaded, config, chosen) if chosen else []
    answers = contained = refusals = declined = answers_declined = 0
    shown: list[dict[str, str]] = []
    for example, output in zip(chosen, outputs, strict=True):
        if example.kind == "refusal":
            refusals += 1
            declined += is_decline(output)
        else:
            answers += 1
            contained += contains(output, example.target)
            answers_declined += is_decline(output)
        if len(shown) < samples:
            shown.append(
                {
                    "kind": example.kind,
                    "question": example.question,
                    "reference": example.target,
                    "output": output,
                }
            )
    return EvalReport(
        loss=round(loss, 4),
        answers=answers,
        contained=contained,
        refusals=refusals,
        declined=declined,
        answers_declined=answers_declined,
        seconds=round(time.perf_counter() - started, 2),
        samples=shown,
    )
