"""Typed configuration read once from environment variables."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ServiceSettings(BaseSettings):
    """Settings every service has; each service subclasses it with its own fields."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=False, extra="ignore")

    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = "text"
    max_in_flight: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Requests served at once per worker before answering 429; default: the "
        "worker's threads minus one, so that the bound is reached before requests queue inside "
        "gunicorn, and one thread stays free to answer 429 at once.",
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above)."
    )
    readiness_interval_s: float = Field(
        5.0,
        ge=0.0,
        le=300.0,
        description="How often /readyz's check runs in the background (0: on every call).",
    )
    internal_api_key: SecretStr | None = Field(
        None,
        description="Key the services use between themselves: the retriever and the generator "
        "require it (but on /healthz, /readyz, /metrics); the gateway and the tools send it.",
    )

    @property
    def worker_threads(self) -> int:
        """Threads per gunicorn worker (each service reads its own variable)."""
        return 8

    @property
    def in_flight_limit(self) -> int:
        """The in-flight bound in force: reachable under the worker's thread count."""
        return self.max_in_flight or max(1, self.worker_threads - 1)


class ConfigError(RuntimeError):
    """An environment variable holds a value the service cannot use."""


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(settings_cls: type[SettingsT], **overrides: object) -> SettingsT:
    """Read settings from the environment, with overrides, naming each bad variable on failure."""
    try:
        return settings_cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or '?'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration for {settings_cls.__name__}: {problems}") from exc
