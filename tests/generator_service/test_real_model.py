"""The real bundled SmolLM2-135M-Instruct: its chat template, its stop tokens, stop strings,
and the fallback the local start relies on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from generator_service.app import create_app
from generator_service.batching import SamplingParams
from generator_service.config import load_config
from generator_service.generators import LocalGenerator
from generator_service.model import LoadedModel, load_model
from generator_service.prompt import PromptBuilder, choose_template

pytestmark = pytest.mark.slow

PRICING = (
    "The Household plan costs $5.99 per month and covers up to six people. "
    "The Pro plan costs $12.99 per month."
)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir) -> LoadedModel:
    return load_model("smollm2-135m-instruct")


@pytest.fixture
def generator(smollm2: LoadedModel) -> Iterator[LocalGenerator]:
    made = LocalGenerator(smollm2, max_batch_size=4)
    yield made
    made.close()


def _builder(generator: LocalGenerator) -> PromptBuilder:
    assert generator.chat_format is not None
    return PromptBuilder(
        choose_template("auto", True),
        generator.counter,
        context_tokens=2048,
        eos_token=generator.eos_token,
        chat_format=generator.chat_format,
    )


def _deadline() -> float:
    import time

    return time.monotonic() + 120


def test_the_model_loads_with_its_chat_template_and_end_of_turn_tokens(
    smollm2: LoadedModel,
) -> None:
    tokenizer = smollm2.tokenizer
    assert smollm2.has_chat_template
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in (smollm2.origin or "")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
    endoftext = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert {im_end, im_start, endoftext} <= smollm2.stop_token_ids


def test_the_prompt_is_the_models_own_chat_template(generator: LocalGenerator) -> None:
    prompt = _builder(generator).build(
        "How much is it?",
        [PRICING],
        history=[],
        max_new_tokens=32,
    )
    expected = generator.loaded.tokenizer.apply_chat_template(
        prompt.messages, tokenize=False, add_generation_prompt=True
    )
    assert prompt.text == expected
    assert prompt.text.startswith("<|im_start|>system\n")
    assert prompt.text.endswith("<|im_start|>assistant\n")
    # The snippets travel in the user's turn, right before the answer.
    last_user = prompt.text.rsplit("<|im_start|>user\n", 1)[1]
    assert PRICING in last_user
    assert "How much is it?" in last_user


def test_the_answer_ends_at_the_end_of_turn_token(generator: LocalGenerator) -> None:
    prompt = _builder(generator).build(
        "How much does the Household plan cost per month?", [PRICING], max_new_tokens=64
    )
    result = generator.start(prompt, SamplingParams(max_new_tokens=64), _deadline()).result()
    assert result.finish_reason == "stop", result
    assert result.completion_tokens < 64
    assert result.text
    assert "<|im" not in result.text
    assert "assistant" not in result.text.lower()


def test_a_stop_string_cuts_the_real_answer(generator: LocalGenerator) -> None:
    prompt = _builder(generator).build(
        "How much does the Household plan cost per month?", [PRICING], max_new_tokens=64
    )
    free = generator.start(prompt, SamplingParams(max_new_tokens=64), _deadline()).result()
    assert "5.99" in free.text, free.text
    cut = generator.start(
        prompt, SamplingParams(max_new_tokens=64, stop=("5.99",)), _deadline()
    ).result()
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index("5.99")].strip()
    assert cut.completion_tokens < free.completion_tokens


def _serve(**overrides: Any):
    return create_app(load_config(**overrides))


def test_the_service_names_the_model_it_serves(smollm2_dir) -> None:
    app = _serve(generator_model="smollm2-135m-instruct", generator_max_new_tokens=48)
    try:
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 200, ready.get_json()
        body = ready.get_json()
        assert (body["model"], body["template"]) == ("smollm2-135m-instruct", "chat")
        assert "SmolLM2-135M-Instruct" in body["model_origin"]
        assert "fallback_reason" not in body
        answer = app.test_client().post(
            "/v1/generate",
            json={"question": "How much does the Pro plan cost?", "snippets": [PRICING]},
        )
        assert answer.status_code == 200, answer.get_json()
        reply = answer.get_json()
        assert reply["model"] == "smollm2-135m-instruct"
        assert reply["finish_reason"] == "stop"
        assert "Question:" not in reply["answer"]
        assert "Context:" not in reply["answer"]
    finally:
        app.extensions["generator"].close()


def test_an_unloadable_model_falls_back_to_the_bundled_one_and_says_so(smollm2_dir) -> None:
    # Offline, DialoGPT-medium is not in the cache here: the fallback is served instead.
    app = _serve(
        generator_model="microsoft/DialoGPT-medium",
        generator_model_fallback="smollm2-135m-instruct",
    )
    try:
        body = app.test_client().get("/readyz").get_json()
        assert body["model"] == "smollm2-135m-instruct", body
        assert "microsoft/DialoGPT-medium could not be loaded" in body["fallback_reason"]
    finally:
        app.extensions["generator"].close()
