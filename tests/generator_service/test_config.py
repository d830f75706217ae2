"""Generator settings: defaults, environment, and values refused at startup."""

from __future__ import annotations

import pytest

from generator_service.config import DEFAULT_GENERATOR_MODEL, load_config
from qa_common.config import ConfigError


def test_defaults() -> None:
    config = load_config()
    assert config.generator_model == DEFAULT_GENERATOR_MODEL == "microsoft/DialoGPT-medium"
    assert config.generator_backend == "local"
    assert (config.generator_device, config.generator_dtype) == ("cpu", "float32")
    assert config.generator_max_new_tokens == 64
    assert config.generator_max_new_tokens_cap == 256
    assert config.generator_do_sample is False
    # "auto": the model's own chat template when it has one, DialoGPT's EOS-joined turns if not.
    assert config.generator_prompt_template == "auto"
    assert config.generator_model_fallback is None
    assert "Question:" in config.generator_stop


def test_stop_strings_and_fallback_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENERATOR_STOP", '["###", "\\nQ:"]')
    monkeypatch.setenv("GENERATOR_MODEL_FALLBACK", "smollm2-135m-instruct")
    config = load_config()
    assert config.generator_stop == ["###", "\nQ:"]
    assert config.generator_model_fallback == "smollm2-135m-instruct"


def test_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENERATOR_DTYPE", "int8")
    monkeypatch.setenv("GENERATOR_MAX_BATCH_SIZE", "4")
    monkeypatch.setenv("GENERATOR_REVISION", "refs/pr/1")
    config = load_config()
    assert (config.generator_dtype, config.generator_max_batch_size) == ("int8", 4)
    assert config.generator_revision == "refs/pr/1"


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"generator_dtype": "float16"}, "GENERATOR_DTYPE"),
        ({"generator_prompt_template": "nope"}, "GENERATOR_PROMPT_TEMPLATE"),
        ({"generator_max_new_tokens": 300}, "GENERATOR_MAX_NEW_TOKENS"),
        ({"generator_max_new_tokens": 100, "generator_max_new_tokens_cap": 50}, "CAP"),
        ({"generator_backend": "openai"}, "GENERATOR_API_BASE"),
        ({"generator_temperature": 0}, "GENERATOR_TEMPERATURE"),
    ],
)
def test_bad_values_fail_at_startup(overrides: dict, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_config(**overrides)
