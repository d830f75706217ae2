"""Errors specific to the retriever, on top of the shared tree."""

from __future__ import annotations

from qa_common.errors import Conflict, NotFound, NotReady


class DocumentNotFound(NotFound):
    code = "document_not_found"


class CollectionNotFound(NotFound):
    code = "collection_not_found"


class EmbeddingModelMismatch(Conflict):
    """A collection was built with another embedding model; mixing vectors would be garbage."""

    code = "embedding_model_mismatch"


class WriteConflict(Conflict):
    """A concurrent write of the same document won; this one was not kept."""

    code = "write_conflict"


class MigrationRequired(NotReady):
    """The store was written by an earlier layout; the migration command re-keys it."""

    code = "migration_required"
