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
    # Stop tokens are not taken before this many tokens (at most max_new_tokens); the
    # generator benchmark sets it to max_new_tokens so that every answer has the same length.
    min_new_tokens: Annotated[int, Field(ge=0, le=MAX_NEW_TOKENS_CAP)] | None = None
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


# -- the OpenAI-compatible routes (/v1/chat/completions, /v1/completions) ----------------------

# The OpenAI API takes at most 4 stop sequences.
MAX_OPENAI_STOP = 4
StopText = Annotated[str, StringConstraints(min_length=1, max_length=64)]


def _text_parts(value: object) -> object:
    # The newer content shape, a list of {"type": "text", "text": …} parts, read as one string;
    # images and audio are not served.
    if not isinstance(value, list):
        return value
    texts = []
    for part in value:
        if not (isinstance(part, dict) and part.get("type") == "text"):
            raise ValueError("only text parts are supported")
        if not isinstance(part.get("text"), str):
            raise ValueError("a text part needs a string text")
        texts.append(part["text"])
    return "".join(texts)


def _one_or_list(value: object) -> object:
    # The API takes one stop string or a list of them.
    return [value] if isinstance(value, str) else value


class ChatMessage(StrictModel):
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, BeforeValidator(_text_parts), StringConstraints(max_length=100_000)]
    name: Annotated[str, StringConstraints(max_length=64)] | None = None


class StreamOptions(StrictModel):
    include_usage: bool = False


class OpenAIRequest(StrictModel):
    """What the chat and the plain completion requests share."""

    # Accepted and ignored: the response names the model actually served.
    model: Annotated[str, StringConstraints(max_length=256)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS_CAP)] | None = None
    # 0 is greedy, as in the OpenAI API.
    temperature: Annotated[Number, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[Number, Field(gt=0.0, le=1.0)] | None = None
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    stop: (
        Annotated[list[StopText], BeforeValidator(_one_or_list), Field(max_length=MAX_OPENAI_STOP)]
        | None
    ) = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # One choice per request; clients that send n send 1.
    n: Literal[1] | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None

    @property
    def stop_list(self) -> tuple[str, ...]:
        return tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(OpenAIRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=200)]
    # The newer name of max_tokens; wins when both are sent.
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_NEW_TOKENS_CAP)] | None = None

    @property
    def answer_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(OpenAIRequest):
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=400_000)]

    @property
    def answer_tokens(self) -> int | None:
        return self.max_tokens
