"""Gateway settings, read once from environment variables (see the README's table)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from qa_common.config import ServiceSettings, load_settings


class GatewayConfig(ServiceSettings):
    """Everything the gateway reads from its environment."""

    # Read by gunicorn.conf.py too: the in-flight bound (MAX_IN_FLIGHT) is set below it.
    gateway_threads: int = Field(16, ge=1, le=1024)

    @property
    def worker_threads(self) -> int:
        return self.gateway_threads

    retriever_url: str = "http://127.0.0.1:8001"
    generator_url: str = "http://127.0.0.1:8002"
    retriever_connect_timeout_s: float = Field(1.0, gt=0, le=60)
    retriever_read_timeout_s: float = Field(10.0, gt=0, le=600)
    generator_connect_timeout_s: float = Field(1.0, gt=0, le=60)
    generator_read_timeout_s: float = Field(30.0, gt=0, le=600)
    # A write (upload, documents, delete) waits for parsing and embedding, not for a search:
    # its own, longer timeout.
    upload_timeout_s: float = Field(600.0, gt=0, le=3600)
    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1024)
    connect_retries: int = Field(1, ge=0, le=5)
    replica_cooldown_s: float = Field(10.0, ge=0, le=3600)
    dns_refresh_s: float = Field(15.0, ge=0, le=3600)

    search_mode: Literal["dense", "lexical", "hybrid"] = "hybrid"
    default_top_k: int = Field(5, ge=1, le=20)
    context_snippets: int = Field(3, ge=1, le=20)
    max_history_turns: int = Field(20, ge=0, le=200)
    no_answer_min_relevance: float = Field(0.52, ge=-1, le=2)
    no_answer_lexical_weight: float = Field(0.4, ge=0, le=2)
    # Measured alternatives (docs/benchmarks.md, no-answer gate): IDF-weighted word share, and
    # a penalty when a name in the question is in none of the top snippets.
    no_answer_idf_weighted: bool = False
    no_answer_missing_name_penalty: float = Field(0.0, ge=0, le=2)
    grounding_min_overlap: float = Field(0.6, ge=0, le=1)
    grounding_min_similarity: float = Field(0.5, ge=-1, le=1)
    grounding_top_sentences: int = Field(2, ge=1, le=64)
    # A generated answer that is the service's decline sentence (what a fine-tuned model
    # writes when its snippets do not answer) becomes a no_answer.
    honor_generator_decline: bool = True
    extractive_max_sentences: int = Field(2, ge=1, le=10)
    extractive_lexical_weight: float = Field(0.5, ge=0, le=5)

    admin_api_key: SecretStr | None = None
    api_keys: SecretStr | None = None

    @field_validator("admin_api_key", "api_keys", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def retriever_urls(self) -> list[str]:
        return [u.strip() for u in self.retriever_url.split(",") if u.strip()]

    @property
    def generator_urls(self) -> list[str]:
        return [u.strip() for u in self.generator_url.split(",") if u.strip()]

    @property
    def ask_keys(self) -> list[str]:
        raw = self.api_keys.get_secret_value() if self.api_keys else ""
        return [k.strip() for k in raw.split(",") if k.strip()]


def load_config(**overrides: object) -> GatewayConfig:
    """Read the gateway's configuration from the environment."""
    return load_settings(GatewayConfig, **overrides)
