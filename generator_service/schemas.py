"""Request bodies of the generator API; validation errors name the field (422)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    StringConstraints,
    field_validator,
)

from generator_service.config import MAX_NEW_TOKENS_CAP
from qa_common.validation import StrictModel, not_blank


def _number_not_bool(value: object) -> object:
    # JSON true is not 1.0: with strict mode off for floats, pydantic would take it.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


# Strict mode would refuse an integer like 1 for a float; JSON clients send either.
Number = Annotated[float, BeforeValidator(_number_not_bool), Field(strict=False)]


class HistoryTurn(StrictModel):
    role: Literal["user", "assistant"]
    text: Annotated[str, StringConstraints(max_length=20_000)]


class GenerateRequest(StrictModel):
    question: Annotated[str, StringConstraints(min_length=1, max_length=100_000)]
    snippets: Annotated[list[str], Field(max_length=100)]
    history: Annotated[list[HistoryTurn], Field(max_length=100)] = Field(default_factory=list)
    max_new_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS_CAP)] | None = None
    stream: bool = False
    do_sample: bool | None = None
    temperature: Annotated[Number, Field(gt=0.0, le=2.0)] | None = None
    top_p: Annotated[Number, Field(gt=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    # More text that ends the answer, on top of the service's GENERATOR_STOP.
    stop: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=8)
    ] = Field(default_factory=list)
    # A caller with its own deadline (the gateway) may shorten the service's.
    timeout_s: Annotated[Number, Field(gt=0.0, le=3600.0)] | None = None

    _blank_question = field_validator("question")(not_blank)
