"""``POST /v1/chat/completions``: the OpenAI Chat Completions shape over the ``Answerer``.

The same retrieval, grounding and modes as ``/v1/ask``; only the wire shape differs.

- **Request.** The last user message is the question (1–2000 characters, as ``/v1/ask``'s);
  the user and assistant messages before it are the history. System (and ``developer``)
  messages are accepted and ignored: the gateway's own instructions write the answer, and a
  client's system prompt must not steer retrieval or loosen grounding. After the question only
  system messages may follow. ``model`` is echoed back (``grounded-qa`` when not sent). The
  token bounds and sampling fields are accepted and ignored: the answer is the one that passed
  the grounding check, never cut short. ``collection`` and ``top_k`` are extra fields.
- **Response.** A ``chat.completion`` whose message is the answer, ``finish_reason`` ``stop``,
  ``usage`` all zeros (the gateway does not count tokens), and the answer's facts as extra
  fields: ``mode``, ``sources``, ``degraded``, ``relevance``, ``grounding``, ``request_id``.
- **Streaming.** ``chat.completion.chunk`` data lines: the role as soon as the sources are
  found, then the final answer, the one that passed the grounding check or the extractive one
  that replaced it, as one content delta (the generator's raw tokens never reach the client),
  then the ``finish_reason`` chunk carrying the extra fields, a ``usage`` chunk with
  ``stream_options.include_usage``, and ``data: [DONE]``. A failure after the first chunk is a
  last ``data: {"error": …}`` (the project's envelope, which OpenAI clients raise as an API
  error) without ``[DONE]``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from gateway.answering import Turn
from gateway.schemas import MAX_QUESTION_CHARS, ChatCompletionRequest
from qa_common.errors import ServiceError, ValidationFailed

log = logging.getLogger(__name__)

DEFAULT_MODEL = "grounded-qa"
# The same bounds as /v1/ask's history: at most this many turns, each cut to this length.
MAX_HISTORY_TURNS = 50
MAX_TURN_CHARS = 8000
# The answer's facts copied from the /v1/ask object onto the completion, when present.
EXTRA_FIELDS = ("mode", "sources", "degraded", "relevance", "grounding", "request_id")
_SYSTEM_ROLES = ("system", "developer")
_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(
        f"Invalid body field(s): {field}.", details=[{"field": field, "message": message}]
    )


def conversation(body: ChatCompletionRequest) -> tuple[str, list[Turn]]:
    """Return the question (the last user message) and the history (the turns before it)."""
    turns = [(i, m) for i, m in enumerate(body.messages) if m.role not in _SYSTEM_ROLES]
    if not turns:
        raise _invalid("messages", "needs a user message: the question")
    index, last = turns[-1]
    if last.role != "user":
        raise _invalid(f"messages.{index}.role", "the last message must be the user's question")
    question = last.text
    if not question.strip():
        raise _invalid(f"messages.{index}.content", "must contain non-whitespace text")
    if len(question) > MAX_QUESTION_CHARS:
        raise _invalid(
            f"messages.{index}.content", f"the question may be at most {MAX_QUESTION_CHARS} chars"
        )
    history = [Turn(m.role, m.text[:MAX_TURN_CHARS]) for _, m in turns[:-1] if m.text.strip()][
        -MAX_HISTORY_TURNS:
    ]
    return question, history


def models() -> dict[str, Any]:
    """List the one model name the gateway answers as (tools list models before they ask)."""
    return {
        "object": "list",
        "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "grounded-qa"}],
    }


def new_id() -> str:
    """Return a fresh response id in the API's style."""
    return "chatcmpl-" + uuid.uuid4().hex


def _extras(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: answer[key] for key in EXTRA_FIELDS if key in answer}


def completion(answer: dict[str, Any], *, model: str | None) -> dict[str, Any]:
    """Render a /v1/ask answer object as a ``chat.completion``."""
    return {
        "id": new_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model or DEFAULT_MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer["answer"]},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": dict(_ZERO_USAGE),
        **_extras(answer),
    }


def _data(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def completion_chunks(
    events: Iterable[tuple[str, dict[str, Any]]],
    *,
    model: str | None,
    include_usage: bool,
    request_id: str | None,
) -> Iterator[str]:
    """Render ``Answerer.answer_stream`` events as ``chat.completion.chunk`` data lines.

    Only the ``done`` event's answer is sent as content: ``token`` events are the generator's
    text before (or while) it is checked, and the answer that passes may differ from them.
    """
    head = {
        "id": new_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model or DEFAULT_MODEL,
    }
    usage_field = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _data({**head, "choices": [choice], **usage_field, **extra})

    started = False
    try:
        for event, data in events:
            if not started and event in ("sources", "done"):
                started = True
                yield chunk({"role": "assistant", "content": ""}, None)
            if event == "error":
                yield _data({"error": data.get("error", data)})
                return
            if event != "done":
                continue  # sources come with the last chunk; raw tokens never go out
            if data.get("answer"):
                yield chunk({"content": data["answer"]}, None)
            yield chunk({}, "stop", **_extras(data))
            if include_usage:
                yield _data({**head, "choices": [], "usage": dict(_ZERO_USAGE)})
            yield "data: [DONE]\n\n"
            return
        raise ServiceError("The answer stream ended without an answer.")
    except ServiceError as exc:
        log.warning("chat completion stream ended with %s: %s", exc.code, exc.message)
        yield _data(exc.to_dict(request_id))
    except Exception:
        log.exception("chat completion stream failed")
        yield _data(ServiceError().to_dict(request_id))
