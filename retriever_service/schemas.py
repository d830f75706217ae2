"""Request bodies of the retriever API; validation errors name the field (422)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MetadataValue = Annotated[bool | int | float | str, Field(union_mode="left_to_right")]
# Chroma's own rule for collection names.
CollectionName = Annotated[
    str,
    StringConstraints(
        min_length=3, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]$"
    ),
]
DocumentId = Annotated[
    str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$")
]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DocumentIn(_Strict):
    id: DocumentId | None = None
    text: Annotated[str, StringConstraints(min_length=1)]
    metadata: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=256)], MetadataValue
    ] = Field(default_factory=dict)

    _blank_text = field_validator("text")(_not_blank)

    @field_validator("metadata")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = [key for key in value if key.startswith("_")]
        if reserved:
            raise ValueError(f"keys starting with '_' are reserved: {reserved}")
        return value


class IngestRequest(_Strict):
    documents: Annotated[list[DocumentIn], Field(min_length=1)]
    collection: CollectionName | None = None


class SearchRequest(_Strict):
    query: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    top_k: Annotated[int, Field(ge=1, le=50)] = 5
    min_score: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    where: dict[str, Any] | None = None
    collection: CollectionName | None = None

    _blank_query = field_validator("query")(_not_blank)

    @field_validator("where")
    @classmethod
    def _valid_where(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Chroma rejects a bad filter with a bare ValueError deep in the query (a 500 otherwise).
        if value:
            from chromadb.api.types import validate_where

            validate_where(value)
        return value


class EmbedRequest(_Strict):
    texts: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]


class CollectionQuery(_Strict):
    model_config = ConfigDict(extra="ignore", strict=False)

    collection: CollectionName | None = None
