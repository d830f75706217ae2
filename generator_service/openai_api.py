"""The OpenAI wire format: requests of ``/v1/chat/completions`` and ``/v1/completions`` become
a ``Prompt`` and ``SamplingParams``, a ``GenerationResult`` (or a stream of pieces) becomes the
API's response body or its ``data:`` chunks.

Chat messages are rendered with the served model's own chat template when it has one. Without
one, the fallback follows the service's prompt template: DialoGPT's templates join the turns'
text with EOS and end with EOS (the model writes the next turn; a system message is just the
first turn), the others write one ``System: …`` / ``User: …`` / ``Assistant: …`` line per
message and end with ``Assistant:``, and a line that starts another turn ends the answer, as an
end-of-turn token would. The oldest turns after the system messages are dropped until the prompt
and ``max_tokens`` fit the context; when even the last message cannot fit, the request is
refused (422 ``prompt_too_long``). A plain completion prompt is never cut.

Only the request's own ``stop`` strings apply here (GENERATOR_STOP is for ``/v1/generate``);
EOS and end-of-turn tokens always end the answer.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from generator_service.batching import GenerationResult, SamplingParams
from generator_service.config import GeneratorConfig
from generator_service.errors import PromptTooLong
from generator_service.prompt import ChatFormat, Prompt, TokenCounter
from generator_service.schemas import (
    MAX_OPENAI_STOP,
    ChatCompletionRequest,
    CompletionRequest,
    OpenAIRequest,
)
from qa_common.errors import ServiceError, ValidationFailed

log = logging.getLogger(__name__)

Kind = Literal["chat", "completion"]
# Lines that start another turn in the plain fallback rendering.
PLAIN_TURN_STOPS = ("\nUser:", "\nSystem:", "\nAssistant:")
_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


def api_stop(stops: Iterable[str]) -> list[str] | None:
    """Return the stop strings the OpenAI API accepts: the first four, or None."""
    kept = [s for s in stops if s][:MAX_OPENAI_STOP]
    return kept or None


def sampling_params(
    config: GeneratorConfig, body: OpenAIRequest, max_new_tokens: int | None
) -> SamplingParams:
    """Translate the request's sampling fields; temperature 0 is greedy, as in the API."""
    max_new = max_new_tokens or config.generator_max_new_tokens
    if max_new > config.generator_max_new_tokens_cap:
        named = isinstance(body, ChatCompletionRequest) and body.max_completion_tokens
        field = "max_completion_tokens" if named else "max_tokens"
        raise ValidationFailed(
            f"{field} may be at most {config.generator_max_new_tokens_cap}.",
            details=[{"field": field, "message": "above the configured cap"}],
        )
    if body.temperature == 0:
        do_sample = False
    else:
        do_sample = config.generator_do_sample or body.temperature is not None
        do_sample = do_sample or body.top_p is not None
    return SamplingParams(
        max_new_tokens=max_new,
        min_new_tokens=min(config.generator_min_new_tokens, max_new),
        do_sample=do_sample,
        temperature=body.temperature or config.generator_temperature,
        top_p=body.top_p or config.generator_top_p,
        no_repeat_ngram_size=config.generator_no_repeat_ngram_size,
        repetition_penalty=config.generator_repetition_penalty,
        seed=body.seed,
        stop=tuple(dict.fromkeys(body.stop_list)),
    )


def render_messages(
    messages: list[dict[str, str]],
    *,
    chat_format: ChatFormat | None,
    eos_joined: bool,
    eos_token: str,
) -> str:
    """Render chat messages as the text the model continues (see the module docstring)."""
    if chat_format is not None:
        return chat_format(messages)
    if eos_joined:
        return "".join(m["content"] + eos_token for m in messages)
    lines = [f"{_ROLE_LABELS[m['role']]}: {m['content']}" for m in messages]
    return "\n".join([*lines, "Assistant:"])


def chat_prompt(
    body: ChatCompletionRequest,
    *,
    counter: TokenCounter,
    context_tokens: int,
    max_new_tokens: int,
    chat_format: ChatFormat | None,
    eos_joined: bool,
    eos_token: str,
) -> tuple[Prompt, tuple[str, ...]]:
    """Fit the messages into the context; return the prompt and the rendering's own stops."""
    messages = [{"role": m.role, "content": m.content} for m in body.messages]
    budget = context_tokens - max_new_tokens
    # Leading system messages stay; the oldest turns after them go first.
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    first = min(first, len(messages) - 1)

    def render(kept: list[dict[str, str]]) -> str:
        return render_messages(
            kept, chat_format=chat_format, eos_joined=eos_joined, eos_token=eos_token
        )

    dropped = 0
    text = render(messages)
    tokens = counter.count(text)
    while tokens > budget and first + dropped < len(messages) - 1:
        dropped += 1
        kept = messages[:first] + messages[first + dropped :]
        text = render(kept)
        tokens = counter.count(text)
    if tokens > budget:
        raise PromptTooLong(
            f"The messages take {tokens} tokens even without earlier turns; with "
            f"max_tokens={max_new_tokens} the model's context of {context_tokens} tokens leaves "
            f"room for {budget}.",
            details=[{"field": "messages", "message": "too long for the model's context"}],
        )
    kept = messages[:first] + messages[first + dropped :]
    last = kept[-1]["content"]
    stops = PLAIN_TURN_STOPS if chat_format is None and not eos_joined else ()
    prompt = Prompt(
        text=text,
        token_count=tokens,
        question=last,
        snippets=(),
        history=(),
        dropped_history=dropped,
        messages=kept,
    )
    return prompt, stops


def completion_prompt(
    body: CompletionRequest, *, counter: TokenCounter, context_tokens: int, max_new_tokens: int
) -> Prompt:
    """Take a plain prompt as it is; refuse it when it and the answer do not fit."""
    tokens = counter.count(body.prompt)
    budget = context_tokens - max_new_tokens
    if tokens > budget:
        raise PromptTooLong(
            f"The prompt takes {tokens} tokens; with max_tokens={max_new_tokens} the model's "
            f"context of {context_tokens} tokens leaves room for {budget}.",
            details=[{"field": "prompt", "message": "too long for the model's context"}],
        )
    return Prompt(
        text=body.prompt,
        token_count=tokens,
        question=body.prompt,
        snippets=(),
        history=(),
        messages=[{"role": "user", "content": body.prompt}],
    )


def new_id(kind: Kind) -> str:
    """Return a fresh response id in the API's style."""
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex


def usage(result: GenerationResult) -> dict[str, int]:
    """Render the token counts as the API's ``usage`` object."""
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def response_body(kind: Kind, result: GenerationResult, model: str) -> dict[str, Any]:
    """Render a whole answer as a ``chat.completion`` or ``text_completion`` object."""
    if kind == "chat":
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": result.text},
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": result.text,
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }
    return {
        "id": new_id(kind),
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(result),
    }


def _data(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def stream_events(
    kind: Kind,
    pieces: Iterable[str],
    final: Callable[[], GenerationResult | None],
    *,
    model: str,
    include_usage: bool,
    request_id: str | None,
) -> Iterator[str]:
    """Render pieces as the API's ``data:`` chunks, ending with ``data: [DONE]``.

    A failure after the first chunk cannot change the status any more: it becomes a
    ``data: {"error": …}`` chunk (the project's envelope, which OpenAI clients raise as an API
    error) and the stream ends without ``[DONE]``.
    """
    head = {
        "id": new_id(kind),
        "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    extra = {"usage": None} if include_usage else {}

    def chunk(text: str | None, finish_reason: str | None, role: bool = False) -> str:
        if kind == "chat":
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None}
        choice["finish_reason"] = finish_reason
        return _data({**head, "choices": [choice], **extra})

    try:
        if kind == "chat":
            yield chunk("", None, role=True)
        for piece in pieces:
            yield chunk(piece, None)
        result = final()
        assert result is not None
        yield chunk(None, result.finish_reason)
        if include_usage:
            yield _data({**head, "choices": [], "usage": usage(result)})
        yield "data: [DONE]\n\n"
    except ServiceError as exc:
        log.warning("stream ended with %s: %s", exc.code, exc.message)
        yield _data(exc.to_dict(request_id))
    except Exception:
        log.exception("stream failed")
        yield _data(ServiceError().to_dict(request_id))
