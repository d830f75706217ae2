"""Retriever settings, read once from environment variables (see the README's table)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from qa_common.config import ServiceSettings, load_settings
from retriever_service.parsing.limits import ParseLimits

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class RetrieverConfig(ServiceSettings):
    """Everything the retriever reads from its environment."""

    # Read by gunicorn.conf.py too: the in-flight bound (MAX_IN_FLIGHT) is set below it.
    retriever_threads: int = Field(8, ge=1, le=1024)

    @property
    def worker_threads(self) -> int:
        return self.retriever_threads

    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    embedding_revision: str | None = None
    embedding_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    embedding_batch_size: int = Field(64, ge=1, le=1024)
    embedding_device: str = "cpu"

    chroma_path: str = "var/chroma"
    chroma_host: str | None = None
    chroma_port: int = Field(8000, ge=1, le=65535)
    chroma_ssl: bool = False
    default_collection: str = Field("documents", min_length=3, max_length=512)

    chunk_overlap_tokens: int = Field(32, ge=0, le=128)
    chunk_max_tokens: int | None = Field(
        None, ge=16, description="Chunk budget in model tokens; the model's limit when unset."
    )

    search_mode: Literal["dense", "lexical", "hybrid"] = "hybrid"
    hybrid_fusion: Literal["rrf", "weighted"] = "weighted"
    hybrid_dense_weight: float = Field(0.6, ge=0.0, le=1.0)
    hybrid_candidates: int = Field(50, ge=1, le=1000)
    lexical_index_path: str | None = Field(
        None,
        description="SQLite file of the lexical index; default: beside embedded Chroma data, "
        "in memory with a Chroma server.",
    )
    lexical_reconcile_s: float = Field(300.0, ge=1.0)
    lexical_warm_up: bool = True
    startup_sweep: bool = Field(
        True, description="Remove superseded versions and orphan chunks in the background at start."
    )
    sweep_interval_s: float = Field(
        3600.0, ge=0.0, description="How often the sweep runs again after start; 0: only at start."
    )
    orphan_grace_s: float = Field(
        600.0,
        ge=0.0,
        description="Age after which chunks no committed version names (a writer died before "
        "committing) are removed by the start-up sweep; keep it above any write's duration.",
    )

    max_embed_texts: int = Field(256, ge=1, le=10_000)
    max_documents_per_request: int = Field(1000, ge=1, le=100_000)
    max_text_chars: int = Field(2_000_000, ge=1000)

    max_upload_bytes: int = Field(
        50 * 1024 * 1024, ge=1024, description="Largest file upload accepted (413 above)."
    )
    max_pdf_pages: int = Field(2000, ge=1)
    max_unzipped_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    max_compression_ratio: float = Field(100.0, ge=2.0)
    parse_timeout_s: float = Field(60.0, gt=0)
    parse_memory_mb: int = Field(2048, ge=256)
    parse_workers: int = Field(1, ge=1, le=32)

    @model_validator(mode="after")
    def _overlap_fits(self) -> RetrieverConfig:
        if self.chunk_max_tokens is not None and self.chunk_overlap_tokens >= self.chunk_max_tokens:
            raise ValueError("CHUNK_OVERLAP_TOKENS must be smaller than CHUNK_MAX_TOKENS")
        return self

    @property
    def parse_limits(self) -> ParseLimits:
        return ParseLimits(
            max_pages=self.max_pdf_pages,
            max_unzipped_bytes=self.max_unzipped_bytes,
            max_compression_ratio=self.max_compression_ratio,
            timeout_s=self.parse_timeout_s,
            memory_mb=self.parse_memory_mb,
        )

    @property
    def uses_chroma_server(self) -> bool:
        return bool(self.chroma_host)

    @property
    def lexical_index_file(self) -> str | None:
        """Where the lexical index lives: a file, or None for memory."""
        if self.lexical_index_path:
            return None if self.lexical_index_path == ":memory:" else self.lexical_index_path
        if self.uses_chroma_server:
            return None
        return str(Path(self.chroma_path) / "lexical-index.sqlite3")


def load_config(**overrides: object) -> RetrieverConfig:
    """Read the retriever's configuration from the environment."""
    return load_settings(RetrieverConfig, **overrides)
