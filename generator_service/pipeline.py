"""How the service turns a request into a prompt and sampling parameters.

The app and fine-tuning both build them here, so that a model is trained on exactly the prompt
it is later served with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from generator_service.batching import SamplingParams
from generator_service.config import GeneratorConfig
from generator_service.prompt import ChatFormat, PromptBuilder, TokenCounter, choose_template

if TYPE_CHECKING:
    from generator_service.generators import Generator


def prompt_builder(
    config: GeneratorConfig,
    *,
    counter: TokenCounter,
    context_tokens: int,
    eos_token: str,
    chat_format: ChatFormat | None,
) -> PromptBuilder:
    """Return the prompt builder the service uses for a model and configuration."""
    template = choose_template(config.generator_prompt_template, chat_format is not None)
    return PromptBuilder(
        template,
        counter,
        context_tokens=context_tokens,
        eos_token=eos_token,
        max_snippets=config.generator_max_snippets,
        max_history_turns=config.generator_max_history_turns,
        chat_format=chat_format,
    )


def generator_prompt_builder(generator: Generator, config: GeneratorConfig) -> PromptBuilder:
    """Return the prompt builder for a running generator."""
    return prompt_builder(
        config,
        counter=generator.counter,
        context_tokens=generator.context_tokens,
        eos_token=generator.eos_token,
        chat_format=getattr(generator, "chat_format", None),
    )


def sampling_params(
    config: GeneratorConfig,
    *,
    max_new_tokens: int | None = None,
    min_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> SamplingParams:
    """Return the sampling parameters of a request: its own values over the configured ones."""
    max_new = max_new_tokens or config.generator_max_new_tokens
    if do_sample is None:
        do_sample = config.generator_do_sample or temperature is not None or top_p is not None
    return SamplingParams(
        max_new_tokens=max_new,
        min_new_tokens=min(
            config.generator_min_new_tokens if min_new_tokens is None else min_new_tokens,
            max_new,
        ),
        do_sample=do_sample,
        temperature=temperature or config.generator_temperature,
        top_p=top_p or config.generator_top_p,
        no_repeat_ngram_size=config.generator_no_repeat_ngram_size,
        repetition_penalty=config.generator_repetition_penalty,
        seed=seed,
        stop=tuple(dict.fromkeys([*config.generator_stop, *stop])),
    )
