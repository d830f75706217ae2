"""The one error tree every service raises and renders as the JSON envelope.

Library errors (pydantic, werkzeug, requests, chromadb) are translated into these classes in one
place per library, so handlers and clients only ever see a ``ServiceError``.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base of every error a service answers with; carries its HTTP status and code."""

    status: int = 500
    code: str = "internal_error"
    default_message: str = "The service hit an unexpected error."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = dict(headers or {})
        super().__init__(self.message)

    def to_dict(self, request_id: str | None) -> dict[str, Any]:
        """Render the error envelope from DESIGN.md."""
        body: dict[str, Any] = {
            "code": self.code,
            "message": self.message,
            "request_id": request_id,
        }
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"
    default_message = "The request could not be understood."


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"
    default_message = "A valid API key is required."


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"
    default_message = "This key may not do that."


class NotFound(ServiceError):
    status = 404
    code = "not_found"
    default_message = "Nothing exists at this address."


class Conflict(ServiceError):
    status = 409
    code = "conflict"
    default_message = "The request conflicts with the current state."


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"
    default_message = "The request body must be JSON (Content-Type: application/json)."


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_error"
    default_message = "The request body is invalid."


class Overloaded(ServiceError):
    status = 429
    code = "overloaded"
    default_message = "Too many requests in flight; retry shortly."

    def __init__(self, message: str | None = None, *, retry_after_s: int = 1, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(max(1, int(retry_after_s))))


class DependencyError(ServiceError):
    """A service this one depends on failed; subclasses say how."""

    status = 502
    code = "bad_gateway"
    default_message = "A downstream service answered with an error."

    def __init__(self, message: str | None = None, *, dependency: str | None = None, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.dependency = dependency


class BadGateway(DependencyError):
    status = 502
    code = "bad_gateway"


class DependencyUnavailable(DependencyError):
    status = 503
    code = "dependency_unavailable"
    default_message = "A service this request needs cannot be reached."


class DependencyTimeout(DependencyError):
    status = 504
    code = "dependency_timeout"
    default_message = "A service this request needs did not answer in time."


class NotReady(ServiceError):
    status = 503
    code = "not_ready"
    default_message = "The service is not ready."


class DownstreamError(ServiceError):
    """A downstream service rejected the request (4xx); its status and envelope pass through."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message, code=code, details=details)
        self.status = status
