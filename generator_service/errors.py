"""Errors specific to the generator, on top of the shared tree."""

from __future__ import annotations

from qa_common.errors import NotReady, Overloaded, ServiceError, ValidationFailed


class ModelNotLoaded(NotReady):
    code = "model_not_loaded"
    default_message = "The generation model is not loaded."


class QueueFull(Overloaded):
    code = "queue_full"
    default_message = "Too many generation requests are waiting; retry shortly."


class DeadlineExceeded(ServiceError):
    """The answer was not ready before the request's deadline."""

    status = 504
    code = "deadline_exceeded"
    default_message = "The answer was not generated in time."


class PromptTooLong(ValidationFailed):
    """The question alone does not fit the model's context; it is never cut."""

    code = "prompt_too_long"


class GenerationFailed(ServiceError):
    status = 500
    code = "generation_failed"
    default_message = "The model failed while generating."
