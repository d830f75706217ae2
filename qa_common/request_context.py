"""The request id of the request being served, visible to logging and outgoing HTTP calls."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# Caller-supplied ids end up in logs and headers: accept only a safe, bounded alphabet.
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """Make a fresh request id."""
    return uuid.uuid4().hex


def accept_request_id(candidate: str | None) -> str:
    """Return the caller's request id when it is safe to reuse, else a fresh one."""
    if candidate and _VALID_REQUEST_ID.match(candidate):
        return candidate
    return new_request_id()


def get_request_id() -> str | None:
    """Return the id of the request being served, if any."""
    return _request_id.get()


def set_request_id(request_id: str | None) -> None:
    """Bind a request id to the current context."""
    _request_id.set(request_id)
