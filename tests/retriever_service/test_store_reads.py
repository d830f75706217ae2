"""A Chroma server's transient segment error on a read is tried again; nothing else is."""

from __future__ import annotations

import chromadb.errors as chroma_errors
import pytest

from retriever_service.store import ChromaStore

SEGMENT_NOT_ON_DISK = (
    "Error executing plan: Internal error: "
    "Error creating hnsw segment reader: Nothing found on disk"
)


def failing_then(failures: int, message: str) -> tuple[list[int], object]:
    calls: list[int] = []

    def call() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise chroma_errors.InternalError(message)
        return "read"

    return calls, call


def test_a_segment_not_yet_on_disk_is_read_again() -> None:
    calls, call = failing_then(2, SEGMENT_NOT_ON_DISK)
    assert ChromaStore._read(call) == "read"
    assert len(calls) == 3


def test_a_segment_that_stays_missing_fails_after_a_few_tries() -> None:
    calls, call = failing_then(10, SEGMENT_NOT_ON_DISK)
    with pytest.raises(chroma_errors.InternalError):
        ChromaStore._read(call)
    assert len(calls) == 4


def test_other_store_errors_are_not_tried_again() -> None:
    calls, call = failing_then(1, "Error executing plan: something else")
    with pytest.raises(chroma_errors.InternalError):
        ChromaStore._read(call)
    assert len(calls) == 1
