"""What an embedded Chroma write costs per chunk, bare: ``python -m bench.chroma_write_bench``.

The retriever's ingestion is encode + Chroma write (+ HTTP and bookkeeping); this measures the
write alone, on a bare chromadb ``PersistentClient``, and what the collection's HNSW settings
and the shape of the write change:

- data: real all-MiniLM-L6-v2 vectors (the service's model and dtype) of 10k windows of 150-230
  words cut at random from the XQuAD-en paragraphs, with the seven metadata keys a service chunk
  carries; the document is either that window ("200 words") or one of the retriever bench's
  synthetic sentences ("15 words": the texts its 0.8x ingestion target is measured on). Queries:
  500 real XQuAD questions. Vectors are cached under the system temp directory (the first run
  embeds for a few minutes).
- each variant writes all chunks into a fresh collection in its own client directory, timed
  around the write calls only, in wall time and in process CPU time (Chroma's Rust threads
  included; far steadier than wall time on a shared machine). Variants that change the HNSW
  graph also get recall@10 of ``collection.query`` against exact cosine search in numpy.
- every variant of a round runs side by side, interleaved 1024 chunks at a time, so that load
  from other work falls on all alike; ``--repeats`` rounds, medians, and each variant's CPU time
  relative to the default's in the same round. A full run writes 38 × 10k chunks a round:
  about 10-20 minutes a round on 2 busy cores.

``--profile`` instead ingests documents through the retriever's own app
(``retriever_service.app.create_app`` on a temporary ``CHROMA_PATH``, called through Flask's
test client: no gunicorn, no socket), times the KnowledgeBase's calls, and compares with a bare
encode of the same chunks; ``--profile-change`` adds runs with other HNSW settings or with the
chunk text kept in metadata instead of as Chroma's document; ``--profile-out`` adds a cProfile.

Nothing is asserted; ``--write-docs`` writes the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import gc
import hashlib
import json
import os
import pstats
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine_line, write_section

SECTION = "chroma-write"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATASET = REPO.parent / "shared" / "eval" / "xquad-en"
CACHE_DIR = Path(tempfile.gettempdir()) / "chroma-write-bench"
CHUNKS = 10_000
QUERIES = 500
TOP_K = 10
WINDOW_WORDS = (150, 230)
CHUNKS_PER_DOCUMENT = 2
SLICE_CHUNKS = 1024  # chunks a writer writes before the next writer's turn
SEED = 20_260_101
REQUEST_DOCS = 32  # documents per request in --profile, as the ingest CLI sends them


# -- data ----------------------------------------------------------------------------------------


@dataclass
class Data:
    """Chunks as the service stores them, with their vectors, and query vectors."""

    ids: list[str]
    documents: list[str]
    short_documents: list[str]
    metadatas: list[dict[str, Any]]
    vectors: np.ndarray
    queries: np.ndarray
    source: str
    exact: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        # Exact top-k by cosine (the vectors are unit length): the reference for recall.
        scores = self.queries @ self.vectors.T
        top = np.argpartition(-scores, TOP_K, axis=1)[:, :TOP_K]
        self.exact = np.take_along_axis(
            top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1
        )


def _windows(dataset: Path, count: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Cut ``count`` word windows out of the corpus; return them, their article, the questions."""
    words: list[str] = []
    articles: list[str] = []
    with open(dataset / "corpus.jsonl", encoding="utf-8") as corpus:
        for line in corpus:
            row = json.loads(line)
            paragraph = row["text"].split()
            words += paragraph
            articles += [row["_id"].rsplit("__", 1)[0]] * len(paragraph)
    rng = random.Random(seed)
    texts, sources = [], []
    for _ in range(count):
        length = rng.randint(*WINDOW_WORDS)
        start = rng.randrange(len(words) - length)
        texts.append(" ".join(words[start : start + length]))
        sources.append(articles[start])
    with open(dataset / "queries.jsonl", encoding="utf-8") as queries:
        questions = [json.loads(line)["text"] for line in queries]
    return texts, sources, questions


def _synthetic(count: int, seed: int) -> tuple[list[str], list[str], list[str]]:
    """Without the dataset: the retriever bench's synthetic sentences, joined to ~200 words."""
    from bench.retriever_bench import synthetic_texts

    sentences = synthetic_texts(count * 20, seed)
    texts = [" ".join(sentences[i * 20 : (i + 1) * 20]) for i in range(count)]
    return texts, ["synthetic"] * count, synthetic_texts(QUERIES, seed + 1)


def load_data(dataset: Path, count: int, n_queries: int, embedder: Callable[[], Any]) -> Data:
    """Build the chunks; their vectors come from the cache or from ``embedder()`` (slow)."""
    from bench.retriever_bench import synthetic_texts
    from retriever_service.versions import derived_version, versioned_chunk_id

    if (dataset / "corpus.jsonl").exists():
        texts, sources, questions = _windows(dataset, count, SEED)
        source = f"{dataset.name} windows"
    else:
        texts, sources, questions = _synthetic(count, SEED)
        source = "synthetic (dataset not found)"
    questions = random.Random(7).sample(questions, min(n_queries, len(questions)))
    key = hashlib.sha256("\n".join([*texts, *questions]).encode()).hexdigest()[:16]
    cache = CACHE_DIR / f"vectors-{key}.npz"
    if cache.exists():
        stored = np.load(cache)
        vectors, queries = stored["vectors"], stored["queries"]
    else:
        print(f"embedding {len(texts)} chunks and {len(questions)} queries (cached after)...")
        model = embedder()
        queries, vectors = model.encode(questions), model.encode(texts)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        np.savez(cache, vectors=vectors, queries=queries)
    ids, metadatas = [], []
    for i, text in enumerate(texts):
        document_id = f"doc-{i // CHUNKS_PER_DOCUMENT:06d}"
        position = i % CHUNKS_PER_DOCUMENT
        ids.append(versioned_chunk_id(document_id, derived_version(document_id), position))
        # The keys the service adds to every chunk, plus one of the user's.
        metadatas.append(
            {
                "source": sources[i],
                "_document_id": document_id,
                "_version": derived_version(document_id),
                "_written_at": 1_700_000_000.0,
                "_position": position,
                "_chunk_count": CHUNKS_PER_DOCUMENT,
                "_content_hash": hashlib.sha256(document_id.encode()).hexdigest(),
                "_start": position * 1000,
                "_end": position * 1000 + len(text),
            }
        )
    return Data(
        ids=ids,
        documents=texts,
        short_documents=synthetic_texts(count, SEED),
        metadatas=metadatas,
        vectors=np.asarray(vectors, dtype=np.float32),
        queries=np.asarray(queries, dtype=np.float32),
        source=source,
    )


# -- variants ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One way of writing the chunks: HNSW settings, batch size and what each write carries."""

    name: str
    hnsw: dict[str, Any] = field(default_factory=dict)
    batch: int = 64  # chunks per write call; 0 = the client's maximum batch size
    op: str = "upsert"
    documents: str = "document"  # the text as the document, as a metadata key, or "none"
    metadata_keys: tuple[str, ...] | None = None  # None: all seven
    index_change: bool = False  # changes the HNSW graph: recall is reported

    @property
    def configuration(self) -> dict[str, Any]:
        return {"hnsw": {"space": "cosine", **self.hnsw}}


VARIANTS = [
    Variant("default: upsert 64 chunks a call"),
    Variant("upsert 32 a call", batch=32),
    Variant("upsert 256 a call", batch=256),
    Variant("one upsert of all (max batch size)", batch=0),
    Variant("add instead of upsert", op="add"),
    Variant("no documents", documents="none"),
    Variant("text in a metadata key, no document", documents="metadata"),
    Variant("no metadata", metadata_keys=()),
    Variant("3 metadata keys", metadata_keys=("_document_id", "_position", "_content_hash")),
    Variant("vectors only (no documents, no metadata)", documents="none", metadata_keys=()),
    Variant("ef_construction 64", {"ef_construction": 64}, index_change=True),
    Variant("ef_construction 40", {"ef_construction": 40}, index_change=True),
    Variant("max_neighbors 8", {"max_neighbors": 8}, index_change=True),
    Variant("sync_threshold 300", {"sync_threshold": 300}),
    Variant("sync_threshold 3000", {"sync_threshold": 3000}),
    Variant("batch_size 500", {"batch_size": 500}),
    Variant("num_threads 1", {"num_threads": 1}),
    Variant("upsert 256 + text in a metadata key", batch=256, documents="metadata"),
    Variant("upsert 256, vectors only", batch=256, documents="none", metadata_keys=()),
]
BASELINE = VARIANTS[0].name
# Document texts: ~200-word windows (the brief's realistic chunk), or the ~15-word synthetic
# sentences the retriever bench ingests (where the 0.8x ingestion target is measured).
KINDS = ("200 words", "15 words")


@dataclass
class Measured:
    variant: Variant
    kind: str
    wall_ms: list[float] = field(default_factory=list)  # per chunk, one per round
    cpu_ms: list[float] = field(default_factory=list)
    wall_vs_default: list[float] = field(default_factory=list)
    cpu_vs_default: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)


@contextlib.contextmanager
def _client(path: Path) -> Iterator[Any]:
    """A PersistentClient on a fresh directory, dropped (and the directory removed) after."""
    import chromadb
    from chromadb.api.shared_system_client import SharedSystemClient
    from chromadb.config import Settings

    client = chromadb.PersistentClient(
        path=str(path), settings=Settings(anonymized_telemetry=False, allow_reset=False)
    )
    try:
        yield client
    finally:
        del client
        SharedSystemClient.clear_system_cache()
        gc.collect()
        shutil.rmtree(path, ignore_errors=True)


class Writer:
    """One variant's writes into its own fresh client and collection, a call at a time."""

    def __init__(self, variant: Variant, kind: str, data: Data, client: Any) -> None:
        self.variant = variant
        self.kind = kind
        self.data = data
        self.collection = client.create_collection(
            "bench", configuration=variant.configuration, embedding_function=None
        )
        self.batch = variant.batch or int(client.get_max_batch_size())
        total = len(data.ids)
        self.calls = [
            (first, min(first + self.batch, total)) for first in range(0, total, self.batch)
        ]
        self.done = 0
        self.wall = self.cpu = 0.0
        self.recall_value = float("nan")

    @property
    def progress(self) -> float:
        return self.done / len(self.calls)

    def step(self) -> None:
        first, last = self.calls[self.done]
        data, variant = self.data, self.variant
        kwargs: dict[str, Any] = {
            "ids": data.ids[first:last],
            "embeddings": data.vectors[first:last],
        }
        texts = data.documents if self.kind == KINDS[0] else data.short_documents
        if variant.documents == "document":
            kwargs["documents"] = texts[first:last]
        keys = variant.metadata_keys
        if keys is None or keys or variant.documents == "metadata":
            metadatas = [
                {k: v for k, v in m.items() if keys is None or k in keys}
                for m in data.metadatas[first:last]
            ]
            if variant.documents == "metadata":
                for metadata, text in zip(metadatas, texts[first:last], strict=True):
                    metadata["_text"] = text
            kwargs["metadatas"] = metadatas
        write = self.collection.upsert if variant.op == "upsert" else self.collection.add
        # Process CPU time counts Chroma's own threads too, and is far less disturbed than wall
        # time by other work on the machine.
        wall, cpu = time.perf_counter(), time.process_time()
        write(**kwargs)
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        self.done += 1

    def recall(self) -> float:
        data = self.data
        found = self.collection.query(
            query_embeddings=data.queries, n_results=TOP_K, include=["distances"]
        )["ids"]
        index = {chunk: i for i, chunk in enumerate(data.ids)}
        hits = [
            len({index[c] for c in row} & set(data.exact[q].tolist()))
            for q, row in enumerate(found)
        ]
        return sum(hits) / (TOP_K * len(hits))


def run_round(
    jobs: Sequence[tuple[Variant, str]], data: Data, workdir: Path, rotation: int
) -> list[Writer]:
    """Write every job's chunks, interleaved call by call: the least advanced writer goes next."""
    with contextlib.ExitStack() as stack:
        writers = [
            Writer(variant, kind, data, stack.enter_context(_client(workdir / f"w{i}")))
            for i, (variant, kind) in enumerate(jobs)
        ]
        # Rotated tie-break order, so that no writer always goes first.
        order = writers[rotation % len(writers) :] + writers[: rotation % len(writers)]
        while True:
            pending = [w for w in order if w.done < len(w.calls)]
            if not pending:
                break
            writer = min(pending, key=lambda w: w.progress)
            # A slice of calls at a time: short enough to share the machine's load alike, long
            # enough that a writer's caches are warm as they would be in one service.
            target = min(writer.done + max(1, SLICE_CHUNKS // writer.batch), len(writer.calls))
            while writer.done < target:
                writer.step()
        for writer in writers:
            # The graph does not depend on the documents: recall from the first kind only.
            if writer.kind == jobs[0][1] and (
                writer.variant.index_change or writer.variant.name == BASELINE
            ):
                writer.recall_value = writer.recall()
    return writers


def run_all(
    variants: Sequence[Variant], kinds: Sequence[str], data: Data, repeats: int, workdir: Path
) -> list[Measured]:
    # Variants without documents run once per kind too: each kind's default is their reference.
    jobs = [(v, k) for v in variants for k in kinds]
    results = {(v.name, k): Measured(v, k) for v, k in jobs}
    n = len(data.ids)
    for repeat in range(repeats):
        started = time.perf_counter()
        writers = run_round(jobs, data, workdir / f"r{repeat}", rotation=repeat * 7)
        base = {w.kind: w for w in writers if w.variant.name == BASELINE}
        for w in writers:
            m = results[(w.variant.name, w.kind)]
            m.wall_ms.append(w.wall / n * 1000)
            m.cpu_ms.append(w.cpu / n * 1000)
            m.wall_vs_default.append(w.wall / base[w.kind].wall)
            m.cpu_vs_default.append(w.cpu / base[w.kind].cpu)
            m.recall.append(w.recall_value)
            print(
                f"  {w.variant.name}, {w.kind}: {m.wall_ms[-1]:.3f} ms/chunk wall, "
                f"{m.cpu_ms[-1]:.3f} CPU ({m.cpu_vs_default[-1]:.2f} of default)"
                + ("" if w.recall_value != w.recall_value else f", recall {w.recall_value:.4f}"),
                flush=True,
            )
        print(
            f"round {repeat + 1}/{repeats} done in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    return list(results.values())


# -- report --------------------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def nearest_neighbour_cosine(vectors: np.ndarray, sample: int = 500) -> float:
    """Median cosine of a chunk to its nearest other chunk: how near-duplicate the set is."""
    rows = vectors[:sample] @ vectors.T
    rows[np.arange(len(rows)), np.arange(len(rows))] = -1
    return float(np.median(rows.max(axis=1)))


def render(
    results: Sequence[Measured],
    data: Data,
    kinds: Sequence[str],
    repeats: int,
    load: tuple[float, float],
) -> str:
    by_key = {(r.variant.name, r.kind): r for r in results}
    names = list(dict.fromkeys(r.variant.name for r in results))
    lines = [
        "## Chroma write cost, bare (`python -m bench.chroma_write_bench`)",
        "",
        f"chromadb {_chroma_version()} `PersistentClient` (embedded), a fresh client directory "
        f"and collection (cosine) per variant; {len(data.ids)} chunks with real "
        f"all-MiniLM-L6-v2 vectors of {data.source} ({WINDOW_WORDS[0]}-{WINDOW_WORDS[1]} "
        "words), the 7 metadata keys of a service chunk, and as document either that window "
        "(200 words) or one of the retriever bench's synthetic sentences (15 words, the texts "
        "its 0.8x ingestion target is measured on). Timed around the write calls only; ms per "
        "chunk, wall time and process CPU time (Chroma's threads included), medians over "
        f"{repeats} rounds. All variants run in the same round, interleaved "
        f"{SLICE_CHUNKS} chunks at a time; 'vs default' is the median over rounds of "
        "variant ÷ default CPU time in the same round and for the same documents. "
        f"Recall@{TOP_K}: `collection.query` (ef_search 100) against exact cosine search in "
        f"numpy, {len(data.queries)} real XQuAD questions; median nearest-neighbour cosine "
        f"between chunks {nearest_neighbour_cosine(data.vectors):.3f} (overlapping windows of "
        "a 30k-word corpus: many near duplicates, harder for HNSW than most corpora).",
        "",
        "| variant | "
        + " | ".join(f"{k}: wall / CPU ms | {k}: CPU vs default" for k in kinds)
        + f" | recall@{TOP_K} |",
        "|---|" + "---:|---:|" * len(kinds) + "---:|",
    ]
    for name in names:
        cells = []
        recall = float("nan")
        for kind in kinds:
            r = by_key[(name, kind)]
            cells.append(
                f"{_median(r.wall_ms):.3f} / {_median(r.cpu_ms):.3f} | "
                f"{_median(r.cpu_vs_default):.2f}"
            )
            if kind == kinds[0]:
                recall = _median(r.recall)
        recall_cell = "—" if recall != recall else f"{recall:.4f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {recall_cell} |")
    lines += [
        "",
        f"{machine_line()} Cores shared with other work (1-minute load average {load[0]:.1f} "
        f"at the start, {load[1]:.1f} at the end): wall times swing with it, CPU times much "
        "less.",
    ]
    return "\n".join(lines)


def _chroma_version() -> str:
    import chromadb

    return str(chromadb.__version__)


# -- profile of the service path -----------------------------------------------------------------

# What --profile times separately, as (label, owner path, attribute); owners that do not exist in
# this version of the service are skipped.
PROFILE_TIMERS = [
    ("encode", "embedder", "encode"),
    ("chunking", "chunker", "split"),
    ("content hash", "", "content_hash"),
    ("Chroma get", "store", "get"),
    ("Chroma upsert", "store", "upsert"),
    ("Chroma delete", "store", "delete"),
    ("write log + lexical", "lexical", "record_write"),
]


class _Timers:
    """Wall time spent in wrapped callables, by label."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._wrapped: list[tuple[Any, str, Any]] = []

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        inner = getattr(owner, attribute)
        self._wrapped.append((owner, attribute, vars(owner).get(attribute)))

        @functools.wraps(inner)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - started
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(owner, attribute, timed)

    def restore(self) -> None:
        """Put back what ``wrap`` replaced (the embedder is shared between runs)."""
        for owner, attribute, own in reversed(self._wrapped):
            if own is None:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)
        self._wrapped.clear()


def _override_hnsw(store: Any, hnsw: dict[str, Any]) -> None:
    """Make the store create collections with these HNSW settings (store.py stays as it is)."""
    chroma = store._get_client()
    create = chroma.get_or_create_collection

    def get_or_create(name: str, *args: Any, configuration: Any = None, **kwargs: Any) -> Any:
        if configuration and "hnsw" in configuration:
            configuration = {**configuration, "hnsw": {**configuration["hnsw"], **hnsw}}
        return create(name, *args, configuration=configuration, **kwargs)

    chroma.get_or_create_collection = get_or_create


TEXT_IN_METADATA = "text_in_metadata"


def _text_in_metadata(store: Any) -> None:
    """Make the store's upsert keep each chunk's text in a metadata key, with no document.

    What the proposed store.py change writes; Chroma then skips its trigram full-text index.
    Only the write side is emulated: enough for ingestion.
    """

    def upsert(collection: str, chunks: Sequence[Any]) -> None:
        col = store._collection(collection, create=True)
        col.upsert(
            ids=[c.id for c in chunks],
            embeddings=np.stack([c.embedding for c in chunks]),
            metadatas=[{**c.metadata, "_text": c.text} for c in chunks],
        )

    store.upsert = upsert


def profile_ingest(
    texts: Sequence[str],
    workdir: Path,
    change: dict[str, Any],
    embedder: Any,
    profiler: cProfile.Profile | None = None,
) -> dict[str, Any]:
    """Ingest ``texts`` (a document each) through the app, REQUEST_DOCS a request.

    Before each request, the same request's chunks are encoded bare by the same model object
    (alternating which goes first), so that service time / bare encode time is measured on the
    same texts under the same load, as the retriever bench does over HTTP.
    """
    from retriever_service.app import create_app
    from retriever_service.config import load_config

    config = load_config(chroma_path=str(workdir), log_level="WARNING")
    app = create_app(config, embedder=embedder)
    kb = app.extensions["knowledge_base"]
    hnsw = {k: v for k, v in change.items() if k != TEXT_IN_METADATA}
    if hnsw:
        _override_hnsw(kb.store, hnsw)
    if change.get(TEXT_IN_METADATA):
        _text_in_metadata(kb.store)
    client = app.test_client()
    bare_encode = kb.embedder.encode
    requests = [
        [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts[k : k + REQUEST_DOCS], k)]
        for k in range(0, len(texts), REQUEST_DOCS)
    ]
    # The bare side encodes exactly the chunks the service will make of each request.
    request_chunks = [[t for d in body for t in _chunk_texts(kb, d["text"])] for body in requests]
    # Warm-up, not counted: lazy initialisation on the first calls.
    client.post("/v1/documents", json={"documents": requests[0][:4], "collection": "warm-up"})
    bare_encode(request_chunks[0])
    timers = _Timers()
    for label, owner_path, attribute in PROFILE_TIMERS:
        owner = getattr(kb, owner_path, None) if owner_path else kb
        if owner is not None and hasattr(owner, attribute):
            timers.wrap(owner, attribute, label)
    chunks, service_s, bare_s, pair_ratios = 0, 0.0, 0.0, []
    try:
        for k, body in enumerate(requests):
            took: dict[str, float] = {}
            for side in ("bare", "service") if k % 2 == 0 else ("service", "bare"):
                started = time.perf_counter()
                if side == "bare":
                    bare_encode(request_chunks[k])
                else:
                    if profiler:
                        profiler.enable()
                    response = client.post("/v1/documents", json={"documents": body})
                    if profiler:
                        profiler.disable()
                    assert response.status_code == 200, response.get_data(as_text=True)
                    chunks += int(response.get_json()["chunks"])
                took[side] = time.perf_counter() - started
            bare_s += took["bare"]
            service_s += took["service"]
            pair_ratios.append(took["bare"] / took["service"])
    finally:
        timers.restore()
    return {
        "chunks": chunks,
        "requests": len(requests),
        "service": service_s,
        "bare": bare_s,
        "pair_ratio": statistics.median(pair_ratios),
        "seconds": dict(timers.seconds),
        "calls": dict(timers.calls),
    }


def _chunk_texts(kb: Any, text: str) -> list[str]:
    return [piece.text for piece in kb.chunker.split(text)]


def render_profile(runs: dict[str, list[dict[str, Any]]], kind: str, repeats: int) -> str:
    labels = [label for label, _, _ in PROFILE_TIMERS]
    first = next(iter(runs.values()))[0]
    lines = [
        f"### A service ingest request, broken down ({kind})",
        "",
        f"`POST /v1/documents` of {first['requests']} requests of {REQUEST_DOCS} documents "
        f"({first['chunks']} chunks) through Flask's test client (no gunicorn, no socket), on "
        "an empty embedded Chroma; timers around the KnowledgeBase's calls; ms per chunk, "
        f"medians over {repeats} rounds. 'bare encode' is the same request's chunks encoded by "
        "the same model object just before or after it; 'ratio' = bare encode ÷ service time "
        "(the issue's target is 0.8), 'median pair' the median of that ratio per request.",
        "",
        "| collection settings | service | bare encode | ratio | median pair | "
        + " | ".join(labels)
        + " | rest (Flask, pydantic, JSON, metadata) |",
        "|---|" + "---:|" * (len(labels) + 5),
    ]
    for name, rounds in runs.items():
        # Per round, then the median: each column, "rest" included, from the same rounds.
        def ms(value: float, r: dict[str, Any]) -> float:
            return value / r["chunks"] * 1000

        parts = [_median([ms(r["seconds"].get(label, 0.0), r) for r in rounds]) for label in labels]
        rest = _median(
            [
                ms(r["service"] - sum(r["seconds"].get(label, 0.0) for label in labels), r)
                for r in rounds
            ]
        )
        service = _median([ms(r["service"], r) for r in rounds])
        bare = _median([ms(r["bare"], r) for r in rounds])
        ratio = _median([r["bare"] / r["service"] for r in rounds])
        pair = _median([r["pair_ratio"] for r in rounds])
        lines.append(
            f"| {name} | {service:.3f} | {bare:.3f} | {ratio:.2f} | {pair:.2f} | "
            + " | ".join(f"{x:.3f}" for x in parts)
            + f" | {rest:.3f} |"
        )
    calls = first["calls"]
    lines += [
        "",
        "Calls per request: "
        + ", ".join(f"{label} {calls[label] / first['requests']:.1f}" for label in calls)
        + ".",
    ]
    return "\n".join(lines)


def _profile_main(args: argparse.Namespace, data: Data, workdir: Path) -> str:
    from bench.retriever_bench import synthetic_texts

    settings: dict[str, dict[str, Any]] = {"stock": {}}
    for change in args.profile_change or []:
        settings[json.dumps(change, separators=(", ", ": "))] = change
    kinds = {
        # A 150-230-word window makes 1.5 chunks on average.
        KINDS[0]: data.documents[: round(args.profile_docs / 1.5)],
        KINDS[1]: synthetic_texts(args.profile_docs, seed=20_260_101),
    }
    embedder = _embedder()  # one model for every app built here
    runs_made = 0

    def run(texts: Sequence[str], change: dict[str, Any], profiler: Any = None) -> dict[str, Any]:
        nonlocal runs_made
        runs_made += 1
        return profile_ingest(texts, workdir / f"run-{runs_made}", change, embedder, profiler)

    sections = []
    for kind, texts in kinds.items():
        if kind not in args.kinds:
            continue
        if args.profile_out:
            # A separate run under cProfile: its overhead would distort the timed rounds.
            profiler = cProfile.Profile()
            run(texts, {}, profiler)
            out = args.profile_out.with_suffix(f".{kind.split()[0]}-words.prof")
            profiler.dump_stats(out)
            print(f"cProfile of the service path ({kind} documents): {out}")
            pstats.Stats(str(out)).sort_stats("tottime").print_stats(30)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in settings}
        for repeat in range(args.repeats):
            order = list(settings.items())
            # Rotate which setting goes first in each round.
            order = order[repeat % len(order) :] + order[: repeat % len(order)]
            for name, change in order:
                result = run(texts, change)
                runs[name].append(result)
                print(
                    f"  {kind} documents, {name}, round {repeat + 1}: service "
                    f"{result['service'] / result['chunks'] * 1000:.3f} ms/chunk, bare encode "
                    f"{result['bare'] / result['chunks'] * 1000:.3f}",
                    flush=True,
                )
        sections.append(render_profile(runs, f"{kind} documents", args.repeats))
    return "\n\n".join(sections)


# -- main ----------------------------------------------------------------------------------------


def _embedder() -> Any:
    from retriever_service.config import load_config
    from retriever_service.embedder import load_embedder

    config = load_config()
    return load_embedder(
        config.embedding_model,
        dtype=config.embedding_dtype,
        device=config.embedding_device,
        batch_size=config.embedding_batch_size,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chroma_write_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--chunks", type=int, default=CHUNKS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--only", nargs="+", metavar="TEXT", help="run the variants whose name contains a TEXT"
    )
    parser.add_argument(
        "--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="document texts to use"
    )
    parser.add_argument("--profile", action="store_true", help="profile the service path instead")
    parser.add_argument(
        "--profile-docs", type=int, default=2_000, help="about this many chunks in --profile"
    )
    parser.add_argument(
        "--profile-change",
        type=json.loads,
        action="append",
        metavar="JSON",
        help="a change to compare with the stock service in --profile: HNSW settings and/or "
        f'"{TEXT_IN_METADATA}": true, e.g. \'{{"ef_construction": 64}}\' (repeatable)',
    )
    parser.add_argument("--profile-out", type=Path, help="write the cProfile stats here")
    parser.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    load_start = os.getloadavg()[0]
    data = load_data(args.dataset, args.chunks, QUERIES, _embedder)
    with tempfile.TemporaryDirectory(prefix="chroma-write-bench-") as tmp:
        if args.profile:
            markdown = _profile_main(args, data, Path(tmp))
        else:
            variants = [v for v in VARIANTS if not args.only or any(t in v.name for t in args.only)]
            if BASELINE not in {v.name for v in variants}:
                variants.insert(0, VARIANTS[0])
            kinds = [k for k in KINDS if k in args.kinds]
            results = run_all(variants, kinds, data, args.repeats, Path(tmp))
            load = (load_start, os.getloadavg()[0])
            markdown = render(results, data, kinds, args.repeats, load)
    print()
    print(markdown)
    if args.write_docs:
        section = f"{SECTION}-profile" if args.profile else SECTION
        write_section(section, markdown)
        print(f"\nwrote docs/benchmarks.md (section {section})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
