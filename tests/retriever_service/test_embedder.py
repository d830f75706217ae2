"""The embedder's batching: few input shapes, the same vectors as the bare library."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from retriever_service.embedder import TOKEN_BUCKET, batch_plan


@pytest.mark.parametrize("count", [0, 1, 2, 5, 37, 64, 65, 200, 1000])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 64, 100])
def test_batch_plan_covers_every_row_once_in_power_of_two_batches(
    count: int, batch_size: int
) -> None:
    plan = batch_plan(count, batch_size)
    covered = [row for first, size in plan for row in range(first, first + size)]
    assert covered == list(range(count))
    for _, size in plan:
        assert size & (size - 1) == 0, size
        assert size <= batch_size
    # Never more batches than needed beyond the remainder's binary digits.
    full = count // (1 << (batch_size.bit_length() - 1))
    assert len(plan) <= full + (count % (1 << (batch_size.bit_length() - 1))).bit_count()


def _random_texts(rng: random.Random, count: int) -> list[str]:
    words = "the boiler pressure gauge reads bar when cold refill valve open slowly".split()
    return [" ".join(rng.choices(words, k=rng.randint(1, 120))) for _ in range(count)]


@pytest.fixture
def seen_shapes(embedder: Any) -> Any:
    """Record the shape of every input the model's transformer runs on."""
    shapes: list[tuple[int, int]] = []

    def record(_module: Any, args: tuple) -> None:
        shapes.append(tuple(args[0]["input_ids"].shape))

    # The sentence-transformers module, not the Hugging Face model: it calls the model's
    # ``forward`` directly, past any hook there.
    handle = embedder._model[0].register_forward_pre_hook(record)
    yield shapes
    handle.remove()


def test_forward_passes_see_only_bucketed_shapes(embedder: Any, seen_shapes: list) -> None:
    rng = random.Random(7)  # noqa: S311 - test data, not secrets
    for _ in range(60):
        embedder.encode(_random_texts(rng, rng.randint(1, 70)))
    assert seen_shapes
    for rows, tokens in seen_shapes:
        assert rows & (rows - 1) == 0, rows
        assert tokens % TOKEN_BUCKET == 0, tokens
    # Batch sizes 1..64 and lengths up to the model's limit: a bounded set, whatever is sent.
    max_shapes = embedder.batch_size.bit_length() * -(-(embedder.max_tokens + 2) // TOKEN_BUCKET)
    assert len(set(seen_shapes)) <= max_shapes


def test_vectors_match_the_bare_library_in_the_callers_order(embedder: Any) -> None:
    texts = _random_texts(random.Random(3), 37)  # noqa: S311 - test data
    ours = embedder.encode(texts)
    bare = embedder._model.encode(texts, batch_size=64).astype(np.float32)
    bare /= np.linalg.norm(bare, axis=1, keepdims=True)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)
    # Padding is masked out; what remains is rounding between batch shapes, larger in bf16.
    cosine = np.sum(ours * bare, axis=1)
    assert cosine.min() > (0.999 if embedder.dtype == "bfloat16" else 0.99999), cosine.min()
    # Each row is its own text's vector: against the other texts, far lower.
    assert (ours @ bare.T).argmax(axis=1).tolist() == list(range(len(texts)))
