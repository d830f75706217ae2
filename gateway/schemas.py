"""Request and response bodies of the gateway API: they validate requests and document them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from qa_common.validation import CollectionName, MetadataValue, StrictModel, not_blank

MAX_QUESTION_CHARS = 2000


class HistoryTurn(StrictModel):
    """One earlier turn of the conversation."""

    role: Literal["user", "assistant"]
    text: Annotated[str, StringConstraints(min_length=1, max_length=8000)]


class AskRequest(StrictModel):
    """A question, with optional conversation history."""

    question: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_QUESTION_CHARS),
        Field(description="The question, in plain words.", examples=["How much is Comfort+?"]),
    ]
    top_k: Annotated[int, Field(ge=1, le=20, description="Sources to retrieve.")] | None = None
    history: Annotated[list[HistoryTurn], Field(max_length=50)] = Field(default_factory=list)
    stream: bool = Field(False, description="Answer as text/event-stream.")
    collection: CollectionName | None = None

    _blank = field_validator("question")(not_blank)


class SourceOut(BaseModel):
    """A snippet the answer was taken from."""

    document_id: str
    chunk_id: str
    text: str
    score: float = Field(description="Cosine similarity to the question; higher is better.")
    metadata: dict[str, Any]


class Grounding(BaseModel):
    """How well the snippets support a generated answer."""

    overlap: float = Field(description="Share of the answer's content words in the snippets.")
    similarity: float = Field(description="Best cosine between the answer and a snippet sentence.")
    supported: float


class AskResponse(BaseModel):
    """An answer, how it was made, and where it came from."""

    answer: str
    mode: Literal["generated", "extractive", "no_answer"]
    sources: list[SourceOut]
    degraded: list[str] | None = Field(
        None, description="Why the answer is degraded, e.g. generator_unavailable."
    )
    relevance: float | None = Field(
        None, description="How well the best snippets cover the question (see NO_ANSWER_*)."
    )
    grounding: Grounding | None = None
    timings_ms: dict[str, float]
    request_id: str | None


class DocumentIn(StrictModel):
    id: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    text: Annotated[str, StringConstraints(min_length=1)]
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)


class DocumentsRequest(StrictModel):
    """Documents to add or replace (forwarded to the retriever)."""

    documents: Annotated[list[DocumentIn], Field(min_length=1)]
    collection: CollectionName | None = None


class DocumentResult(BaseModel):
    id: str
    status: Literal["created", "updated", "unchanged"]
    chunks: int


class DocumentsResponse(BaseModel):
    documents: int
    chunks: int
    created: int | None = None
    updated: int | None = None
    unchanged: int | None = None
    results: list[DocumentResult] | None = None


class DeleteResponse(BaseModel):
    deleted_chunks: int


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str | None
    details: Any = None


class ErrorEnvelope(BaseModel):
    """Every error: a code to branch on, a message to show, the request id to report."""

    error: ErrorBody


class Health(BaseModel):
    status: str
    model_config = ConfigDict(extra="allow")
