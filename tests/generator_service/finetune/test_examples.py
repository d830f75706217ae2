"""Examples: the served prompt, masked labels, refusal pairing, and the held-out split."""

from __future__ import annotations

from generator_service.finetune.contexts import Grounded, holds_answer, refusal_snippets
from generator_service.finetune.data import QARecord
from generator_service.finetune.examples import (
    IGNORE,
    Example,
    ExampleEncoder,
    build_examples,
    split_examples,
)
from generator_service.generators import LocalGenerator
from generator_service.model import HFTokenCounter, LoadedModel
from generator_service.pipeline import generator_prompt_builder, prompt_builder
from qa_common.answer_texts import DECLINE_TEXT


def grounded(
    rid: str, answer: str | None, snippets: tuple[str, ...], documents: tuple[str, ...] = ()
) -> Grounded:
    record = QARecord(rid, f"Question {rid}?", answer, (), "qa.jsonl", 1)
    return Grounded(record, snippets, frozenset(documents), "gateway")


def test_an_example_is_the_served_prompt_then_the_answer_and_end_token(
    tiny_loaded: LoadedModel, tiny_config
) -> None:
    config = tiny_config()
    served = LocalGenerator(tiny_loaded)
    try:
        serving_builder = generator_prompt_builder(served, config)
    finally:
        served.close()
    counter = HFTokenCounter(tiny_loaded.tokenizer)
    builder = prompt_builder(
        config,
        counter=counter,
        context_tokens=served.context_tokens,
        eos_token=tiny_loaded.eos_token,
        chat_format=None,
    )
    example = Example("answer", "q1", "How much is Comfort+?", ("It costs $3.49.",), "$3.49.")
    encoded = ExampleEncoder(builder, counter, tiny_loaded.eos_token_id, 256).encode(example)
    assert encoded is not None
    target = [*counter.encode("$3.49."), tiny_loaded.eos_token_id]
    prompt = counter.encode(
        serving_builder.build(example.question, example.snippets, max_new_tokens=len(target)).text
    )
    assert encoded.input_ids == prompt + target
    assert encoded.labels == [IGNORE] * len(prompt) + target
    assert encoded.target_tokens == len(target)


def test_examples_too_long_for_the_budget_are_skipped_or_trimmed(
    tiny_loaded: LoadedModel, tiny_config
) -> None:
    counter = HFTokenCounter(tiny_loaded.tokenizer)
    builder = prompt_builder(
        tiny_config(),
        counter=counter,
        context_tokens=64,
        eos_token=tiny_loaded.eos_token,
        chat_format=None,
    )
    encoder = ExampleEncoder(builder, counter, tiny_loaded.eos_token_id, 64)
    long_snippet = "The Halo thermostat " * 40
    trimmed = encoder.encode(Example("answer", "a", "What is Halo?", (long_snippet,), "A device."))
    assert trimmed is not None
    assert len(trimmed.input_ids) <= 64
    assert encoder.encode(Example("answer", "b", "What?", (), "word " * 80)) is None


def test_refusals_never_get_snippets_that_answer_them() -> None:
    items = [
        grounded("a", "It costs $3.49 per month.", ("Comfort+ costs $3.49 per month.",), ("d1",)),
        grounded("b", "Comfort+ is $3.49 monthly.", ("Comfort+ is $3.49 a month.",), ("d2",)),
        grounded("c", "Up to 6 people.", ("Share with up to 6 people.",), ("d1",)),
        grounded("d", "E3 is a wiring mismatch.", ("E3 means a wiring mismatch.",), ("d3",)),
    ]
    pairs = refusal_snippets(items, 1.0, seed=0)
    assert len(pairs) == 4
    by_question = {item.record.id: snippets for item, snippets in pairs}
    # a and b answer each other in other words; a and c share a document.
    assert by_question["a"] == items[3].snippets
    assert by_question["c"] != items[0].snippets
    for item, snippets in pairs:
        assert not holds_answer(snippets, item.record.answer or "")
    examples = build_examples(items, pairs)
    refusals = [e for e in examples if e.kind == "refusal"]
    assert len(refusals) == 4
    assert {e.target for e in refusals} == {DECLINE_TEXT}


def test_holds_answer_reads_verbatim_and_most_words() -> None:
    assert holds_answer(["It costs $3.49 per month, billed monthly."], "$3.49 per month.")
    assert holds_answer(["Billed monthly, the price is 3.49."], "3.49 monthly price")
    assert not holds_answer(["E3 means a wiring mismatch."], "It costs $3.49 per month.")


def test_the_split_holds_out_whole_questions_seeded() -> None:
    items = [grounded(str(i), f"Answer {i}.", (f"Snippet {i}.",)) for i in range(20)]
    examples = build_examples(items, refusal_snippets(items, 0.5, seed=1))
    train, held = split_examples(examples, 0.25, seed=1)
    assert len({e.record_id for e in held}) == 5
    assert not {e.record_id for e in train} & {e.record_id for e in held}
    assert split_examples(examples, 0.25, seed=1) == (train, held)
    assert split_examples(examples, 0.25, seed=2) != (train, held)
    assert split_examples(examples, 0.0, seed=1) == (examples, [])
    few = build_examples(items[:3], [])
    assert len(split_examples(few, 0.01, seed=0)[1]) == 1
