"""Request and response bodies of the retriever API; validation errors name the field (422)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from qa_common.validation import CollectionName, MetadataValue, StrictModel, not_blank

DocumentId = Annotated[
    str, StringConstraints(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class SegmentIn(StrictModel):
    """A span of the text and where it comes from: a PDF page, a section under a heading."""

    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=1)]
    page: Annotated[int, Field(ge=1)] | None = None
    section: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = None


class DocumentIn(StrictModel):
    id: DocumentId | None = None
    text: Annotated[str, StringConstraints(min_length=1)]
    metadata: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=256)], MetadataValue
    ] = Field(default_factory=dict)
    segments: list[SegmentIn] | None = Field(
        None,
        description="Spans of text, in order and not overlapping, with the page and section "
        "they come from: no chunk crosses a change of page, and each chunk carries the page "
        "and section where it starts.",
    )

    _blank_text = field_validator("text")(not_blank)

    @model_validator(mode="after")
    def _segments_fit(self) -> DocumentIn:
        if not self.segments:
            return self
        previous_end = 0
        for segment in self.segments:
            if not previous_end <= segment.start < segment.end <= len(self.text):
                raise ValueError(
                    "segments must be in order, not overlap, and lie within the text "
                    f"(0 <= start < end <= {len(self.text)})"
                )
            # Only the text inside segments is indexed: none may be left out.
            if self.text[previous_end : segment.start].strip():
                raise ValueError(f"text before offset {segment.start} is in no segment")
            previous_end = segment.end
        if self.text[previous_end:].strip():
            raise ValueError(f"text after offset {previous_end} is in no segment")
        return self

    @field_validator("metadata")
    @classmethod
    def _no_reserved_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        reserved = [key for key in value if key.startswith("_")]
        if reserved:
            raise ValueError(f"keys starting with '_' are reserved: {reserved}")
        return value


class IngestRequest(StrictModel):
    documents: Annotated[list[DocumentIn], Field(min_length=1)]
    collection: CollectionName | None = None


class SearchRequest(StrictModel):
    query: Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
    top_k: Annotated[int, Field(ge=1, le=50)] = 5
    min_score: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    where: dict[str, Any] | None = None
    collection: CollectionName | None = None
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None, description="dense (embeddings), lexical (BM25) or hybrid (both, fused)"
    )
    fusion: Literal["rrf", "weighted"] | None = None
    dense_weight: Annotated[float, Field(ge=0.0, le=1.0)] | None = None

    _blank_query = field_validator("query")(not_blank)

    @field_validator("where")
    @classmethod
    def _valid_where(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        # Chroma rejects a bad filter with a bare ValueError deep in the query (a 500 otherwise).
        if value:
            # The package first: importing chromadb.api.types on its own (a first request with
            # a filter, before the store touched chromadb) fails as a circular import.
            import chromadb  # noqa: F401
            from chromadb.api.types import validate_where

            validate_where(value)
        return value


class EmbedRequest(StrictModel):
    texts: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(min_length=1)]


class CollectionQuery(StrictModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    collection: CollectionName | None = None


class DocumentListQuery(StrictModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    collection: CollectionName | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    offset: Annotated[int, Field(ge=0)] = 0


class UploadForm(StrictModel):
    model_config = ConfigDict(extra="ignore", strict=False)

    collection: CollectionName | None = None


# -- responses (the gateway passes the document ones on: see qa_common.api_models) -------------


class SearchHitOut(BaseModel):
    chunk_id: str
    document_id: str
    text: str
    score: float = Field(description="cosine similarity to the query")
    lexical_score: float | None
    fused_score: float | None
    metadata: dict[str, Any]
    position: int
    start: int | None
    end: int | None


class QueryTermOut(BaseModel):
    term: str
    document_frequency: int
    idf: float
    in_results: bool
    result_ranks: list[int]


class SearchResponse(BaseModel):
    results: list[SearchHitOut]
    mode: Literal["dense", "lexical", "hybrid"]
    fusion: Literal["rrf", "weighted"] | None
    dense_weight: float | None
    query_terms: list[QueryTermOut] | None
    collection_chunks: int | None
    took_ms: float
    embed_ms: float
    query_ms: float
    lexical_sync_ms: float
    lexical_ms: float


class EmbedResponse(BaseModel):
    embeddings: list[list[float]]
    dimension: int
    model: str


class DocumentDetail(BaseModel):
    """A stored document's current version: its chunks' texts, in order."""

    id: str
    collection: str
    chunks: int
    content_hash: str
    metadata: dict[str, Any]
    chunk_texts: list[str]


class StatsResponse(BaseModel):
    collection: str
    documents: int
    chunks: int
    model: str
    dimension: int
    dtype: str
    max_chunk_tokens: int
    chunk_overlap_tokens: int
    store: str
    lexical_index: str
    search_mode: str
    hybrid_fusion: str
    hybrid_dense_weight: float


class CollectionList(BaseModel):
    collections: list[str]


class CollectionDeleted(BaseModel):
    deleted: str
