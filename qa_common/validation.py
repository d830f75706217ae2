"""Pieces of request models that several services validate the same way."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class StrictModel(BaseModel):
    """A request body: no unknown fields (typos are 422s), no type coercion ("5" is not 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


def not_blank(value: str) -> str:
    """Refuse text that is only whitespace."""
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


# A metadata value as Chroma stores it; bool first, since JSON true must not become 1.
MetadataValue = Annotated[bool | int | float | str, Field(union_mode="left_to_right")]
# Chroma's own rule for collection names.
CollectionName = Annotated[
    str,
    StringConstraints(
        min_length=3, max_length=512, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]$"
    ),
]
