"""Typed settings from environment variables."""

from __future__ import annotations

import pytest

from qa_common.config import ConfigError, ServiceSettings, load_settings
from retriever_service.config import RetrieverConfig, load_config


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_LEVEL", "LOG_FORMAT", "MAX_IN_FLIGHT", "MAX_BODY_BYTES"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(ServiceSettings)
    assert settings.log_level == "INFO"
    assert settings.max_in_flight is None
    assert settings.max_body_bytes == 16 * 1024 * 1024


def test_the_in_flight_bound_sits_below_the_workers_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.config import GatewayConfig
    from generator_service.config import GeneratorConfig
    from retriever_service.config import RetrieverConfig

    for name in ("MAX_IN_FLIGHT", "GATEWAY_THREADS", "RETRIEVER_THREADS", "GENERATOR_THREADS"):
        monkeypatch.delenv(name, raising=False)
    # Reachable: a request past the bound finds a free thread that answers 429 at once.
    assert GatewayConfig().in_flight_limit == 15
    assert RetrieverConfig().in_flight_limit == 7
    assert GeneratorConfig().in_flight_limit == 47
    monkeypatch.setenv("GATEWAY_THREADS", "4")
    assert GatewayConfig().in_flight_limit == 3
    monkeypatch.setenv("MAX_IN_FLIGHT", "3")
    assert GatewayConfig().in_flight_limit == 3


def test_values_come_from_environment_case_insensitively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_IN_FLIGHT", "7")
    monkeypatch.setenv("log_format", "json")
    settings = load_settings(ServiceSettings)
    assert settings.max_in_flight == 7
    assert settings.log_format == "json"


def test_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_IN_FLIGHT", "7")
    assert load_settings(ServiceSettings, max_in_flight=3).max_in_flight == 3


def test_settings_are_frozen() -> None:
    settings = load_settings(ServiceSettings)
    with pytest.raises(Exception):  # noqa: B017, PT011 - pydantic's frozen-instance error
        settings.max_in_flight = 5  # type: ignore[misc]


def test_bad_values_name_each_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_IN_FLIGHT", "lots")
    monkeypatch.setenv("LOG_LEVEL", "CHATTY")
    monkeypatch.setenv("MAX_BODY_BYTES", "10")
    with pytest.raises(ConfigError) as info:
        load_settings(ServiceSettings)
    message = str(info.value)
    assert "ServiceSettings" in message
    assert "MAX_IN_FLIGHT" in message
    assert "LOG_LEVEL" in message
    assert "MAX_BODY_BYTES" in message


def test_retriever_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHROMA_HOST", "chroma.internal")
    monkeypatch.setenv("CHROMA_PORT", "8123")
    monkeypatch.setenv("EMBEDDING_DTYPE", "float32")
    config = load_config()
    assert isinstance(config, RetrieverConfig)
    assert config.uses_chroma_server
    assert (config.chroma_host, config.chroma_port, config.embedding_dtype) == (
        "chroma.internal",
        8123,
        "float32",
    )
    assert not load_config(chroma_host="").uses_chroma_server


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHROMA_PORT", "70000"),
        ("EMBEDDING_DTYPE", "float16"),
        ("DEFAULT_COLLECTION", "ab"),
        ("MAX_EMBED_TEXTS", "0"),
        ("CHUNK_MAX_TOKENS", "4"),
    ],
)
def test_retriever_config_names_bad_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_config()


def test_overlap_must_be_smaller_than_chunk_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNK_MAX_TOKENS", "32")
    monkeypatch.setenv("CHUNK_OVERLAP_TOKENS", "32")
    with pytest.raises(ConfigError, match="CHUNK_OVERLAP_TOKENS"):
        load_config()
