"""Errors specific to the retriever, on top of the shared tree."""

from __future__ import annotations

from qa_common.errors import Conflict, NotFound


class DocumentNotFound(NotFound):
    code = "document_not_found"


class CollectionNotFound(NotFound):
    code = "collection_not_found"


class EmbeddingModelMismatch(Conflict):
    """A collection was built with another embedding model; mixing vectors would be garbage."""

    code = "embedding_model_mismatch"
