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


class GroundedSentence(BaseModel):
    """What the grounding check found for one sentence of a generated answer."""

    text: str
    supported: bool
    overlap: float = Field(description="Share of its content words in the backing sentence(s).")
    similarity: float = Field(description="Cosine with the backing snippet sentence.")
    reason: str | None = Field(None, description="Why it is not supported; see Grounding.reason.")
    support: str | None = Field(None, description="The snippet sentence that backs it most.")
    missing: list[str] = Field(
        default_factory=list, description="Numbers, codes and names not found in that sentence."
    )


class Grounding(BaseModel):
    """Whether the snippets support a generated answer, sentence by sentence, and why not."""

    supported: bool
    reason: str | None = Field(
        description="Why the generated text was set aside: empty, prompt_markers, repetition, "
        "echoes_question, missing_facts, low_overlap, low_similarity, support_does_not_answer, "
        "no_support; null when supported."
    )
    overlap: float = Field(description="Lowest share of a sentence's content words backed.")
    similarity: float = Field(description="Lowest cosine of a sentence with its backing.")
    sentences: list[GroundedSentence] = Field(default_factory=list)


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
