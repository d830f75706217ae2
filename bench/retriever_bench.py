"""Benchmark the retriever against the bare libraries it wraps: ``python -m bench.retriever_bench``.

Side by side in one run, on the same texts, for each dtype (fp32, bf16) and size (1k, 10k chunks):

- ingestion: bare sentence-transformers encoding (the model loaded exactly as the service loads
  it) vs ``POST /v1/documents`` of a real gunicorn retriever on an empty embedded Chroma, in
  chunks per second, client-measured over all requests;
- search: a bare query encode + bare Chroma query (``PersistentClient``, cosine,
  ``embedding_function=None``) vs ``POST /v1/search``, p50/p99 in ms, one query at a time,
  alternating the two so background load hits both alike.

The texts are synthetic, generated deterministically (seeded) from word lists: one or two short
sentences each, so one text is one chunk. The queries are generated the same way with another
seed. Figures are printed with their ratios to the targets; nothing is asserted.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine_line, write_section

SECTION = "retriever-bench"
DTYPES = ("float32", "bfloat16")
FULL_SIZES = (1_000, 10_000)
FULL_QUERIES = 200
QUICK_SIZES = (200,)
QUICK_QUERIES = 50
# Documents per ingest request: each text is one chunk, so this is also chunks per request.
REQUEST_DOCS = 256
SEARCH_TOP_K = 5  # the API's default

# Targets from the issue, as ratios.
INGEST_VS_BARE = 0.8  # ingestion >= 0.8x bare encode of the same dtype
BF16_INGEST_VS_FP32_BARE = 2.0  # bf16 ingestion >= 2x bare fp32 encode
SEARCH_VS_BARE = 1.5  # search p50 <= 1.5x bare encode + query

_SUBJECTS = [
    "The night train",
    "Our support team",
    "A small bakery",
    "The city council",
    "The new firmware",
    "The museum guide",
    "A local farmer",
    "The billing service",
    "The harbour crane",
    "The school library",
    "An old lighthouse",
    "The mobile app",
    "The research lab",
    "A delivery drone",
    "The weather station",
    "The hotel desk",
    "The chess club",
    "A solar panel array",
    "The river ferry",
    "The help center",
]
_VERBS = [
    "opens",
    "closes",
    "updates",
    "inspects",
    "repairs",
    "schedules",
    "cancels",
    "publishes",
    "measures",
    "delivers",
    "replaces",
    "reviews",
    "exports",
    "protects",
    "restores",
]
_OBJECTS = [
    "the spare parts",
    "every invoice",
    "the visitor passes",
    "the backup files",
    "the seasonal menu",
    "the safety report",
    "two hundred tickets",
    "the password reset link",
    "the water pumps",
    "the monthly newsletter",
    "the rental bikes",
    "the exhibition catalogue",
    "the sensor readings",
    "the loyalty points",
    "the shipping labels",
]
_WHEN = [
    "every Monday morning",
    "before the holidays",
    "after each storm",
    "at midnight",
    "twice a year",
    "on the first of the month",
    "during the night shift",
    "when the queue is long",
    "once the snow melts",
    "at the end of each quarter",
]
_FOLLOW_UPS = [
    "It takes about {n} minutes.",
    "Roughly {n} people rely on it.",
    "The cost is {n} euros per month.",
    "This has happened {n} times since {year}.",
    "Customers in {n} countries are affected.",
    "The previous record, set in {year}, was {n}.",
    "Nobody noticed until {year}.",
    "A reminder goes out {n} hours in advance.",
]


def synthetic_texts(count: int, seed: int) -> list[str]:
    """Generate ``count`` varied one- or two-sentence texts, the same ones for the same seed."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        text = (
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
            f"{rng.choice(_WHEN)}."
        )
        if rng.random() < 0.6:
            follow = rng.choice(_FOLLOW_UPS)
            text += " " + follow.format(n=rng.randint(2, 950), year=rng.randint(1950, 2025))
        texts.append(text)
    return texts


@dataclass
class Figures:
    """One dtype at one size: bare vs service."""

    dtype: str
    size: int
    bare_encode_cps: float
    ingest_cps: float
    bare_search_p50: float
    bare_search_p99: float
    search_p50: float
    search_p99: float
    server_took_p50: float
    server_embed_p50: float
    server_query_p50: float
    bare_embed_p50: float
    bare_query_p50: float
    bare_write_ms: float = float("nan")
    ingest_ratio_median: float = float("nan")
    chunking_ms: float = float("nan")


def _p(samples: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples), q))


class BareModel:
    """The service's model loaded as the service loads it, called straight, on this thread."""

    def __init__(self, model_name: str, dtype: str, device: str, batch_size: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        from retriever_service.embedder import resolve_dtype, resolve_model_source

        # As load_embedder does: the bundled copy loads with no hub access.
        if resolve_model_source(model_name) != model_name:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.batch_size = batch_size
        self.model = SentenceTransformer(
            resolve_model_source(model_name),
            device=device,
            trust_remote_code=False,
            model_kwargs={"dtype": getattr(torch, resolve_dtype(dtype, device))},
        )
        tokenizer = self.model.tokenizer
        self.max_tokens = int(self.model.max_seq_length) - tokenizer.num_special_tokens_to_add(
            pair=False
        )
        self._tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)

    def token_spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(encoding.offsets) for encoding in encodings]


def _bare_collection(
    client: Any, name: str, texts: Sequence[str], vectors: np.ndarray
) -> tuple[Any, float]:
    """Store the vectors as the service does; return the collection and the write time."""
    collection = client.create_collection(
        name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
    )
    seconds = 0.0
    for first in range(0, len(texts), REQUEST_DOCS):
        rows = range(first, min(first + REQUEST_DOCS, len(texts)))
        # The same per-chunk metadata keys the service writes, and upsert as it does, so that
        # this measures what the service's store write costs without its encoding.
        metadatas = [
            {
                "_document_id": f"doc-{i}",
                "_position": 0,
                "_chunk_count": 1,
                "_content_hash": f"{i:064x}",
                "_start": 0,
                "_end": len(texts[i]),
            }
            for i in rows
        ]
        started = time.perf_counter()
        collection.upsert(
            ids=[f"doc-{i}:0" for i in rows],
            embeddings=vectors[first : rows.stop],
            documents=[texts[i] for i in rows],
            metadatas=metadatas,
        )
        seconds += time.perf_counter() - started
    return collection, seconds


def _ingest_side_by_side(
    embedder: Any, client: Any, texts: Sequence[str], collection: str
) -> tuple[float, float, float, np.ndarray]:
    """Encode each request's texts bare, and post them, alternating; return both rates.

    Also returns the median over requests of (bare time / service time): a burst of load from
    other work skews one request's pair, not the median.
    """
    bare_s = service_s = 0.0
    chunks = 0
    vectors: list[np.ndarray] = []
    pair_ratios: list[float] = []
    for k, first in enumerate(range(0, len(texts), REQUEST_DOCS)):
        batch = list(texts[first : first + REQUEST_DOCS])
        documents = [{"id": f"doc-{first + i}", "text": t} for i, t in enumerate(batch)]
        # The same batches in both, alternating which goes first, so that load from other work
        # on the machine falls on both sides alike.
        took = {}
        for side in ("bare", "service") if k % 2 == 0 else ("service", "bare"):
            started = time.perf_counter()
            if side == "bare":
                vectors.append(embedder.encode(batch))
            else:
                chunks += int(client.ingest(documents, collection)["chunks"])
            took[side] = time.perf_counter() - started
        bare_s += took["bare"]
        service_s += took["service"]
        pair_ratios.append(took["bare"] / took["service"])
    return (
        len(texts) / bare_s,
        chunks / service_s,
        float(np.median(pair_ratios)),
        np.vstack(vectors),
    )


def run_dtype(
    dtype: str,
    sizes: Sequence[int],
    texts: Sequence[str],
    queries: Sequence[str],
    workdir: Path,
) -> list[Figures]:
    """Measure one dtype: bare encode and Chroma in this process, then the real service."""
    import chromadb
    from chromadb.config import Settings

    from qa_common.process import ServiceProcess
    from qa_common.retriever_client import RetrieverClient
    from retriever_service.chunking import Chunker
    from retriever_service.config import load_config

    config = load_config(embedding_dtype=dtype)
    print(f"[{dtype}] loading the model as the service does...", flush=True)
    embedder = BareModel(
        config.embedding_model, dtype, config.embedding_device, config.embedding_batch_size
    )
    chroma = chromadb.PersistentClient(
        path=str(workdir / f"bare-{dtype}"), settings=Settings(anonymized_telemetry=False)
    )
    service = ServiceProcess(
        "retriever_service",
        env={
            "EMBEDDING_DTYPE": dtype,
            "CHROMA_PATH": str(workdir / f"service-{dtype}"),
            "LOG_LEVEL": "WARNING",
        },
        log_path=workdir / f"retriever-{dtype}.log",
    )
    results = []
    bare_cps: dict[int, float] = {}
    ingest_cps: dict[int, float] = {}
    bare_collections: dict[int, Any] = {}
    write_ms: dict[int, float] = {}
    median_ratio: dict[int, float] = {}
    chunk_ms: dict[int, float] = {}
    # The service's chunker, to time what splitting (tokenizing) costs per chunk.
    chunker = Chunker(embedder.token_spans, embedder.max_tokens, config.chunk_overlap_tokens)
    with service:
        service.wait_ready(timeout_s=300)
        client = RetrieverClient(service.url)
        # Warm-up, not counted: the first calls pay for lazy initialisation.
        warmup = list(texts[:REQUEST_DOCS])
        embedder.encode(warmup)
        client.ingest([{"id": f"w{i}", "text": t} for i, t in enumerate(warmup)], "bench-warmup")
        for size in sizes:
            bare_cps[size], ingest_cps[size], median_ratio[size], vectors = _ingest_side_by_side(
                embedder, client, texts[:size], f"bench-{size}"
            )
            print(
                f"[{dtype}] {size} chunks: bare encode {bare_cps[size]:.0f}/s, "
                f"ingest {ingest_cps[size]:.0f}/s",
                flush=True,
            )
            bare_collections[size], write_s = _bare_collection(
                chroma, f"bare-{size}", texts[:size], vectors
            )
            write_ms[size] = write_s / size * 1000
            started = time.perf_counter()
            for text in texts[:size]:
                chunker.split(text)
            chunk_ms[size] = (time.perf_counter() - started) / size * 1000
        for size in sizes:
            results.append(
                _search_figures(
                    dtype,
                    size,
                    embedder,
                    bare_collections[size],
                    client,
                    queries,
                    bare_cps,
                    ingest_cps,
                )
            )
            results[-1].bare_write_ms = write_ms[size]
            results[-1].ingest_ratio_median = median_ratio[size]
            results[-1].chunking_ms = chunk_ms[size]
            print(
                f"[{dtype}] search {size}: bare p50 {results[-1].bare_search_p50:.1f} ms, "
                f"service p50 {results[-1].search_p50:.1f} ms",
                flush=True,
            )
    del embedder
    return results


def _search_figures(
    dtype: str,
    size: int,
    embedder: Any,
    bare_collection: Any,
    client: Any,
    queries: Sequence[str],
    bare_cps: dict[int, float],
    ingest_cps: dict[int, float],
) -> Figures:
    bare_s, bare_embed_s, bare_query_s = [], [], []
    service_s, took, embed, query = [], [], [], []
    collection = f"bench-{size}"

    def bare(text: str) -> None:
        started = time.perf_counter()
        vector = embedder.encode([text])[0]
        embedded = time.perf_counter()
        bare_collection.query(
            query_embeddings=[vector],
            n_results=SEARCH_TOP_K,
            include=["documents", "metadatas", "distances"],
        )
        done = time.perf_counter()
        bare_s.append(done - started)
        bare_embed_s.append(embedded - started)
        bare_query_s.append(done - embedded)

    def served(text: str) -> None:
        started = time.perf_counter()
        # Dense, like the bare side; hybrid is profiled by bench.hybrid_profile.
        response = client.search(text, top_k=SEARCH_TOP_K, collection=collection, mode="dense")
        service_s.append(time.perf_counter() - started)
        took.append(response["took_ms"])
        embed.append(response.get("embed_ms", float("nan")))
        query.append(response.get("query_ms", float("nan")))

    for text in queries[:5]:  # warm-up, not counted
        bare(text)
        served(text)
    for samples in (bare_s, bare_embed_s, bare_query_s, service_s, took, embed, query):
        samples.clear()
    for i, text in enumerate(queries):
        # Alternate which goes first so that neither always runs on a warmer cache.
        first, second = (bare, served) if i % 2 == 0 else (served, bare)
        first(text)
        second(text)
    return Figures(
        dtype=dtype,
        size=size,
        bare_encode_cps=bare_cps[size],
        ingest_cps=ingest_cps[size],
        bare_search_p50=_p(bare_s, 50) * 1000,
        bare_search_p99=_p(bare_s, 99) * 1000,
        search_p50=_p(service_s, 50) * 1000,
        search_p99=_p(service_s, 99) * 1000,
        server_took_p50=_p(took, 50),
        server_embed_p50=_p(embed, 50),
        server_query_p50=_p(query, 50),
        bare_embed_p50=_p(bare_embed_s, 50) * 1000,
        bare_query_p50=_p(bare_query_s, 50) * 1000,
    )


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def render(
    figures: Sequence[Figures], n_queries: int, seconds: float, load: tuple[float, float]
) -> str:
    """Format the figures and the target ratios as Markdown."""
    lines = [
        "## Retriever throughput and latency (`python -m bench.retriever_bench`)",
        "",
        f"Texts: synthetic one- or two-sentence chunks generated deterministically (seeded word "
        f"lists, `synthetic_texts`), one chunk each; ingestion posts {REQUEST_DOCS} per request "
        "to a real gunicorn retriever on an empty embedded Chroma. Bare encode: "
        "`SentenceTransformer` loaded as the service loads it (same path, dtype, batch size), "
        "`encode` called on the bench's main thread on the same "
        f"{REQUEST_DOCS}-text batches, alternating with the requests so that load from other "
        f"work falls on both. Search: {n_queries} synthetic queries, dense (`mode: dense`; "
        f"hybrid is profiled by `bench.hybrid_profile`), top_k={SEARCH_TOP_K}, one "
        "at a time, client-measured; bare = query encode + `collection.query` on a "
        "`PersistentClient` collection (cosine) holding the same vectors.",
        "",
        "| dtype | chunks | bare encode chunks/s | ingest chunks/s | ingest / bare "
        f"(≥ {INGEST_VS_BARE}) | bare encode+query p50 / p99 ms | search p50 / p99 ms | "
        f"search / bare p50 (≤ {SEARCH_VS_BARE}) | server took / embed / query p50 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        ingest_ratio = f.ingest_cps / f.bare_encode_cps
        search_ratio = f.search_p50 / f.bare_search_p50
        lines.append(
            f"| {f.dtype} | {f.size} | {f.bare_encode_cps:.0f} | {f.ingest_cps:.0f} | "
            f"{ingest_ratio:.2f} {_mark(ingest_ratio >= INGEST_VS_BARE)} "
            f"(median per request {f.ingest_ratio_median:.2f}) | "
            f"{f.bare_search_p50:.1f} / {f.bare_search_p99:.1f} "
            f"(encode {f.bare_embed_p50:.1f}, query {f.bare_query_p50:.1f}) | "
            f"{f.search_p50:.1f} / {f.search_p99:.1f} | "
            f"{search_ratio:.2f} {_mark(search_ratio <= SEARCH_VS_BARE)} | "
            f"{f.server_took_p50:.1f} / {f.server_embed_p50:.1f} / {f.server_query_p50:.1f} |"
        )
    lines += [
        "",
        "Where ingestion time goes, in ms per chunk (bare encode, the same upsert on a bare Chroma "
        "collection with the service's metadata keys, the service's chunker, and what is left: "
        "HTTP, JSON, hashing, and the document's version record: read, commit, check, which "
        "costs most on these one-chunk documents, since it is one record per document):",
        "",
        "| dtype | chunks | service ingest | bare encode | Chroma upsert | chunking | rest | "
        "encode / (encode + upsert) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        encode, total = 1000 / f.bare_encode_cps, 1000 / f.ingest_cps
        rest = total - encode - f.bare_write_ms - f.chunking_ms
        lines.append(
            f"| {f.dtype} | {f.size} | {total:.2f} | {encode:.2f} | {f.bare_write_ms:.2f} | "
            f"{f.chunking_ms:.3f} | {rest:.2f} | {encode / (encode + f.bare_write_ms):.2f} |"
        )
    fp32 = {f.size: f for f in figures if f.dtype == "float32"}
    bf16 = {f.size: f for f in figures if f.dtype == "bfloat16"}
    speedups = []
    for size in sorted(set(fp32) & set(bf16)):
        ratio = bf16[size].ingest_cps / fp32[size].bare_encode_cps
        bare_ratio = bf16[size].bare_encode_cps / fp32[size].bare_encode_cps
        speedups.append(
            f"- {size} chunks: bf16 ingestion / bare fp32 encode = {ratio:.2f} "
            f"(≥ {BF16_INGEST_VS_FP32_BARE}: {_mark(ratio >= BF16_INGEST_VS_FP32_BARE)}); "
            f"bare bf16 / bare fp32 encode = {bare_ratio:.2f}"
        )
    if speedups:
        lines += ["", *speedups]
    lines += [
        "",
        "Two costs the service pays on purpose, both largest on these short one-chunk documents: "
        "each document's version record (one more Chroma write per document, what keeps a "
        "replaced document from ever being seen half old, half new), and padding each batch to "
        "a multiple of 16 tokens (a bounded set of tensor shapes keeps the retriever's memory "
        "flat, section embed-memory); measured alone on 2,048 of these texts, that padding "
        "costs 10-25 % of encode time; on chunks of 200 tokens or more it adds at most 15 "
        "tokens in 200 (under 8 %).",
    ]
    lines += [
        "",
        f"{machine_line()} The cores are shared with other work running at the same time "
        f"(1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end), so "
        f"single figures can move by tens of percent between runs; the bare and service sides "
        f"were measured alternately to share that noise. Whole run: {seconds / 60:.1f} min.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.retriever_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: {QUICK_SIZES[0]} chunks, {QUICK_QUERIES} queries, docs untouched",
    )
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    n_queries = QUICK_QUERIES if args.quick else FULL_QUERIES
    texts = synthetic_texts(max(sizes), seed=20_260_101)
    queries = synthetic_texts(n_queries, seed=7)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    figures: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="retriever-bench-") as workdir:
        for dtype in args.dtypes:
            figures += run_dtype(dtype, sizes, texts, queries, Path(workdir))
    load = (load_start, os.getloadavg()[0])
    markdown = render(figures, n_queries, time.perf_counter() - started, load)
    print()
    print(markdown)
    if not (args.quick or args.no_docs):
        write_section(SECTION, markdown)
        print("\nwrote docs/benchmarks.md (section retriever-bench)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
