"""Generator settings, read once from environment variables (see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from qa_common.config import ServiceSettings, load_settings

DEFAULT_GENERATOR_MODEL = "microsoft/DialoGPT-medium"
# A model that runs past its answer starts the next part of the prompt it has seen.
DEFAULT_STOP_STRINGS = ("Question:", "Context:", "\nUser:", "\nAssistant:")
MAX_NEW_TOKENS_CAP = 256


class GeneratorConfig(ServiceSettings):
    """Everything the generator reads from its environment."""

    # Read by gunicorn.conf.py too: the in-flight bound (MAX_IN_FLIGHT) is set below it.
    generator_threads: int = Field(48, ge=1, le=1024)

    @property
    def worker_threads(self) -> int:
        return self.generator_threads

    generator_backend: Literal["local", "openai"] = "local"

    # The local model (transformers): a hub name, a directory, a .gguf file, or a bundled model.
    generator_model: str = DEFAULT_GENERATOR_MODEL
    generator_model_fallback: str | None = Field(
        None, description="Served when GENERATOR_MODEL cannot be loaded (the local start sets it)."
    )
    generator_cache_dir: Path | None = Field(
        None, description="Where GGUF models are converted once; ~/.cache/grounded-qa/models."
    )
    generator_revision: str | None = None
    generator_device: str = "cpu"
    generator_dtype: Literal["float32", "bfloat16", "int8"] = "float32"
    generator_safetensors_only: bool = Field(
        False, description="Refuse pickled .bin weights (DialoGPT's main branch ships only those)."
    )
    generator_torch_threads: int = Field(
        0, ge=0, le=256, description="Intra-op threads per process; 0 keeps torch's default."
    )
    generator_context_tokens: int | None = Field(
        None, ge=32, description="Prompt + answer budget; the model's n_positions when unset."
    )

    # The prompt.
    generator_prompt_template: str = "auto"
    generator_stop: list[str] = Field(
        default_factory=lambda: list(DEFAULT_STOP_STRINGS),
        description="Text that ends an answer (JSON list); EOS and end-of-turn tokens always do.",
    )
    generator_max_snippets: int = Field(8, ge=0, le=100)
    generator_max_history_turns: int = Field(8, ge=0, le=100)

    # Generation defaults and bounds (a request may lower max_new_tokens and set sampling).
    generator_max_new_tokens: int = Field(64, ge=1, le=MAX_NEW_TOKENS_CAP)
    generator_max_new_tokens_cap: int = Field(MAX_NEW_TOKENS_CAP, ge=1, le=MAX_NEW_TOKENS_CAP)
    generator_min_new_tokens: int = Field(1, ge=0, le=16)
    generator_no_repeat_ngram_size: int = Field(3, ge=0, le=16)
    generator_repetition_penalty: float = Field(1.2, ge=1.0, le=2.0)
    generator_do_sample: bool = False
    generator_temperature: float = Field(0.7, gt=0.0, le=2.0)
    generator_top_p: float = Field(0.9, gt=0.0, le=1.0)

    # Serving: one batching loop per process.
    generator_max_batch_size: int = Field(8, ge=1, le=256)
    # Batch + queue stays under MAX_IN_FLIGHT (32), so a full queue answers queue_full first.
    generator_max_queue: int = Field(16, ge=0, le=10_000)
    generator_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    generator_retry_after_s: int = Field(2, ge=1, le=600)

    # The OpenAI-compatible backend.
    generator_api_base: str | None = None
    generator_api_key: SecretStr | None = None  # kept out of reprs and logs
    generator_api_model: str | None = Field(
        None, description="Model name sent upstream; GENERATOR_MODEL when unset."
    )
    generator_api_mode: Literal["chat", "completions"] = "chat"
    generator_api_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    generator_tokenizer: str | None = Field(
        None, description="Tokenizer used to count prompt tokens for the openai backend."
    )

    max_question_chars: int = Field(4000, ge=1, le=1_000_000)
    max_snippet_chars: int = Field(20_000, ge=1, le=10_000_000)

    @field_validator("generator_prompt_template")
    @classmethod
    def _known_template(cls, value: str) -> str:
        from generator_service.prompt import AUTO_TEMPLATE, TEMPLATES

        if value != AUTO_TEMPLATE and value not in TEMPLATES:
            known = ", ".join([AUTO_TEMPLATE, *sorted(TEMPLATES)])
            raise ValueError(f"unknown template {value!r}; known: {known}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> GeneratorConfig:
        if self.generator_max_new_tokens > self.generator_max_new_tokens_cap:
            raise ValueError(
                "GENERATOR_MAX_NEW_TOKENS must not exceed GENERATOR_MAX_NEW_TOKENS_CAP"
            )
        if self.generator_backend == "openai" and not self.generator_api_base:
            raise ValueError("GENERATOR_API_BASE is required when GENERATOR_BACKEND=openai")
        return self

    @property
    def api_model(self) -> str:
        return self.generator_api_model or self.generator_model


def load_config(**overrides: object) -> GeneratorConfig:
    """Read the generator's configuration from the environment."""
    return load_settings(GeneratorConfig, **overrides)
