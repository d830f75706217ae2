"""Request and response bodies of the gateway API: they validate requests and document them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    field_validator,
)

from qa_common.api_models import (  # noqa: F401 - the gateway's API documents these too
    DeleteResponse,
    DocumentList,
    DocumentResult,
    DocumentSummary,
    ErrorEnvelope,
    Health,
    IngestResponse,
    UploadResponse,
)
from qa_common.validation import CollectionName, MetadataValue, StrictModel, not_blank

MAX_QUESTION_CHARS = 2000


class HistoryTurn(StrictModel):
    """One earlier turn of the conversation."""

    role: Literal["user", "assistant"]
    text: Annotated[str, StringConstraints(min_length=1, max_length=8000)]


class ContextRequest(StrictModel):
    """A question, with optional conversation history: what /v1/ask and /v1/context read."""

    question: Annotated[
        str,
        StringConstraints(min_length=1, max_length=MAX_QUESTION_CHARS),
        Field(description="The question, in plain words.", examples=["How much is Comfort+?"]),
    ]
    top_k: Annotated[int, Field(ge=1, le=20, description="Sources to retrieve.")] | None = None
    history: Annotated[list[HistoryTurn], Field(max_length=50)] = Field(default_factory=list)
    collection: CollectionName | None = None

    _blank = field_validator("question")(not_blank)


class AskRequest(ContextRequest):
    """A question, with optional conversation history."""

    stream: bool = Field(False, description="Answer as text/event-stream.")


class SourceOut(BaseModel):
    """A snippet the answer was taken from."""

    document_id: str
    chunk_id: str
    text: str
    score: float = Field(description="Cosine similarity to the question; higher is better.")
    source: str = Field(description="The file (or URL) it came from; the document id otherwise.")
    title: str | None = Field(None, description="The document's title, when it has one.")
    page: int | None = Field(None, description="The PDF page the snippet is on (from 1).")
    section: str | None = Field(None, description="The heading the snippet falls under.")
    metadata: dict[str, Any]


class GroundedSentence(BaseModel):
    """What the grounding check found for one sentence of a generated answer."""

    text: str
    supported: bool
    overlap: float = Field(description="Share of its content words in the backing sentence(s).")
    similarity: float = Field(description="Cosine with the backing snippet sentence.")
    reason: str | None = Field(None, description="Why it is not supported; see Grounding.reason.")
    support: str | None = Field(None, description="The snippet sentence that backs it most.")
    support_rank: int | None = Field(
        None, description="How the extractor ranks that sentence for the question (0: first)."
    )
    missing: list[str] = Field(
        default_factory=list, description="Numbers, codes and names not found in that sentence."
    )


class Grounding(BaseModel):
    """Whether the snippets support a generated answer, sentence by sentence, and why not."""

    supported: bool
    reason: str | None = Field(
        description="Why the generated text was set aside: empty, prompt_markers, repetition, "
        "echoes_question, missing_facts, low_overlap, low_similarity, support_does_not_answer, "
        "no_support; declined when the model wrote the decline sentence (the answer is then "
        "no_answer); null when supported."
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


class GenerationInput(BaseModel):
    """The body /v1/ask would send to the generator for this question."""

    question: str
    snippets: list[str] = Field(description="The snippets the generator is given, in order.")
    history: list[HistoryTurn]
    timeout_s: float | None = Field(
        None, description="How long the generator may write: the gateway's own wait, less 0.5 s."
    )


class ContextResponse(BaseModel):
    """What /v1/ask would start from; fine-tuning builds its training prompts from it."""

    question: str
    query: str = Field(
        description="What was searched: the question, or a follow-up read in "
        "context of the previous question."
    )
    relevance: float = Field(description="The no-answer gate's relevance (see NO_ANSWER_*).")
    answerable: bool = Field(description="False when /v1/ask would answer no_answer outright.")
    generation: GenerationInput
    sources: list[SourceOut]
    no_answer_text: str
    decline_text: str = Field(
        description="The sentence a model writes to decline; /v1/ask reads it as no_answer."
    )
    timings_ms: dict[str, float]
    request_id: str | None


# -- POST /v1/chat/completions: the OpenAI Chat Completions shape ------------------------------

# The OpenAI API takes at most 4 stop sequences.
MAX_OPENAI_STOP = 4


def _number_not_bool(value: object) -> object:
    # JSON true is not 1.0: with strict mode off for floats, pydantic would take it.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


# Strict mode would refuse an integer like 1 for a float; JSON clients send either.
Number = Annotated[float, BeforeValidator(_number_not_bool), Field(strict=False)]


def _text_parts(value: object) -> object:
    # The newer content shape, a list of {"type": "text", "text": …} parts, read as one text
    # (the parts joined by newlines); images and audio are not read.
    if not isinstance(value, list):
        return value
    texts = []
    for part in value:
        if not (isinstance(part, dict) and part.get("type") == "text"):
            raise ValueError("only text parts are supported")
        if not isinstance(part.get("text"), str):
            raise ValueError("a text part needs a string text")
        texts.append(part["text"])
    return "\n".join(texts)


def _one_or_list(value: object) -> object:
    # The API takes one stop string or a list of them.
    return [value] if isinstance(value, str) else value


class ChatMessage(StrictModel):
    """One message; ``developer`` is the newer name of ``system``."""

    role: Literal["system", "developer", "user", "assistant"]
    content: (
        Annotated[str, BeforeValidator(_text_parts), StringConstraints(max_length=100_000)] | None
    ) = Field(None, description='A string, or a list of `{"type": "text", "text"}` parts.')
    name: Annotated[str, StringConstraints(max_length=64)] | None = None

    @property
    def text(self) -> str:
        return self.content or ""


class StreamOptions(StrictModel):
    include_usage: bool = False


class ChatCompletionRequest(StrictModel):
    """The question as the last user message; earlier user/assistant messages are the history.

    System messages are accepted and ignored: the gateway's own instructions hold. ``model``
    is echoed, the sampling fields and the token bounds are accepted and ignored (the answer
    must pass the grounding check as written). ``collection`` and ``top_k`` are this API's own.
    """

    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=200)]
    model: Annotated[str, StringConstraints(max_length=256)] | None = Field(
        None, description="Echoed in the response; the gateway's pipeline answers."
    )
    stream: bool = Field(False, description="Answer as `chat.completion.chunk` data lines.")
    stream_options: StreamOptions | None = None
    top_k: Annotated[int, Field(ge=1, le=20, description="Sources to retrieve.")] | None = None
    collection: CollectionName | None = None
    # Accepted so that OpenAI clients' usual fields are no 422; ignored.
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[Number, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[Number, Field(ge=0.0, le=1.0)] | None = None
    presence_penalty: Annotated[Number, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[Number, Field(ge=-2.0, le=2.0)] | None = None
    seed: int | None = None
    stop: (
        Annotated[
            list[Annotated[str, StringConstraints(max_length=256)]],
            BeforeValidator(_one_or_list),
            Field(max_length=MAX_OPENAI_STOP),
        ]
        | None
    ) = None
    # One choice per request; clients that send n send 1.
    n: Literal[1] | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: None = None
    finish_reason: Literal["stop"]


class CompletionUsage(BaseModel):
    """Always zeros: the gateway does not count tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionResponse(BaseModel):
    """A ``chat.completion`` whose message is the /v1/ask answer; its facts in extra fields."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: CompletionUsage
    mode: Literal["generated", "extractive", "no_answer"]
    sources: list[SourceOut]
    degraded: list[str] | None = None
    relevance: float | None = None
    grounding: Grounding | None = None
    request_id: str | None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """What OpenAI clients list before they ask: the one model the gateway answers as."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class SegmentIn(StrictModel):
    """A span of the text and the page and section it comes from (checked by the retriever)."""

    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=1)]
    page: Annotated[int, Field(ge=1)] | None = None
    section: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None


class DocumentIn(StrictModel):
    id: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None
    text: Annotated[str, StringConstraints(min_length=1)]
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)
    segments: list[SegmentIn] | None = None


class DocumentsRequest(StrictModel):
    """Documents to add or replace (forwarded to the retriever)."""

    documents: Annotated[list[DocumentIn], Field(min_length=1)]
    collection: CollectionName | None = None
