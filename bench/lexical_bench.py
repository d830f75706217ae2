"""Benchmark the lexical index and hybrid search: ``python -m bench.lexical_bench``.

Side by side with the bare libraries, on the same synthetic chunks (100–200 words each, drawn
with a Zipf law from the whole words of the embedding model's own vocabulary, so that each word
is one model token and word frequencies look like English):

1. rebuild: ``LexicalSync.ensure_fresh`` on an empty index over an embedded Chroma collection
   stored as the service stores it (ids "doc:pos", the service's metadata keys, random unit
   vectors), split into Chroma metadata scan / text fetch / FTS5 insert; against a bare sqlite3
   FTS5 bulk insert and a bm25s index of the same texts; and the restart case (a file index that
   already matches Chroma). Each run is a fresh subprocess, so its resident-set growth is its own;
2. the per-search consistency check (one write-log count) on embedded Chroma and on a real
   ``chroma run`` server, and its catch-up cost after one write by another replica;
3. search latency through a real gunicorn retriever, dense / lexical / hybrid against a bare
   encode + bare ``collection.query``, plus ``LexicalIndex.search`` alone at each size;
4. what ``LexicalSync.record_write`` adds to a 256-chunk ingest request.

The Chroma collections take minutes to build at 100k chunks: they are built once and kept in
/tmp/lexical-bench-cache, keyed by size and generator version. Figures are medians over
interleaved repeats; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine_line, write_section
from retriever_service.versions import derived_version, versioned_chunk_id

SECTION = "lexical-bench"
REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path("/tmp/lexical-bench-cache")
# Bump when the generated chunks change: the cache is keyed by it.
# 2: chunks keyed by document version, with version records, as the service stores them.
GENERATOR_VERSION = 2
COLLECTION = "lexical-bench"
DIMENSION = 384
TEXT_SEED = 20_260_301
QUERY_SEED = 99
# Chunks are generated in blocks of this many, each from its own seed, so that the first N
# chunks are the same whatever the total: queries drawn from them fit every size.
BLOCK = 100
FULL_SIZES = (10_000, 100_000)
SERVICE_SIZE = 10_000
QUERIES = 200
REQUEST_CHUNKS = 256
TOP_K = 5
HYBRID_VS_DENSE = 1.5
INGEST_SLOWDOWN = 0.10
VARIANTS = (
    "service-memory",
    "service-file",
    "restart-file",
    "fts5-memory",
    "fts5-file",
    "bm25s",
)
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"

log = logging.getLogger("lexical_bench")


# -- synthetic chunks ---------------------------------------------------------------------------


@cache
def vocabulary() -> tuple[str, ...]:
    """Return whole words of the model's WordPiece vocabulary, most frequent first."""
    from retriever_service.config import DEFAULT_EMBEDDING_MODEL
    from retriever_service.embedder import resolve_model_source

    vocab = Path(resolve_model_source(DEFAULT_EMBEDDING_MODEL)) / "vocab.txt"
    # BERT's vocabulary lists whole words roughly by corpus frequency: file order is a rank.
    words = [w for w in vocab.read_text().split("\n") if re.fullmatch(r"[a-z]{2,}", w)]
    return tuple(dict.fromkeys(words))


@cache
def _word_cdf() -> np.ndarray:
    ranks = np.arange(1, len(vocabulary()) + 1, dtype=np.float64)
    # Zipf–Mandelbrot, the usual fit of English word frequencies.
    weights = 1.0 / (ranks + 2.7)
    return np.cumsum(weights / weights.sum())


@dataclass(frozen=True)
class Chunk:
    """A chunk with the fields the service stores for it."""

    id: str
    document_id: str
    position: int
    chunk_count: int
    start: int
    end: int
    content_hash: str
    text: str
    version: str = ""

    def metadata(self) -> dict[str, str | int]:
        from retriever_service import chunk_keys as keys

        return {
            keys.DOCUMENT_ID: self.document_id,
            keys.VERSION: self.version,
            keys.POSITION: self.position,
            keys.CHUNK_COUNT: self.chunk_count,
            keys.CONTENT_HASH: self.content_hash,
            keys.START: self.start,
            keys.END: self.end,
        }


def _text(rng: np.random.Generator, words: tuple[str, ...], cdf: np.ndarray) -> str:
    count = int(rng.integers(100, 201))
    drawn = [words[i] for i in np.searchsorted(cdf, rng.random(count), side="right")]
    lengths = rng.integers(8, 21, size=count)
    sentences, start, k = [], 0, 0
    while start < count:
        part = drawn[start : start + int(lengths[k])]
        sentences.append(" ".join([part[0].capitalize(), *part[1:]]) + ".")
        start += len(part)
        k += 1
    return " ".join(sentences)


def _block(block: int, seed: int, salt: str = "") -> list[Chunk]:
    rng = np.random.default_rng([seed, block])
    words, cdf = vocabulary(), _word_cdf()
    chunks: list[Chunk] = []
    document = 0
    while len(chunks) < BLOCK:
        # Documents of one to four chunks; the block's last one is cut to fit.
        count = min(int(rng.integers(1, 5)), BLOCK - len(chunks))
        doc_id = f"doc-{block}-{document}{salt}"
        digest = hashlib.sha256(f"{doc_id}/{seed}/{salt}".encode()).hexdigest()
        version = derived_version(doc_id, digest)
        offset = 0
        for position in range(count):
            text = _text(rng, words, cdf)
            chunks.append(
                Chunk(
                    id=versioned_chunk_id(doc_id, version, position),
                    document_id=doc_id,
                    position=position,
                    chunk_count=count,
                    start=offset,
                    end=offset + len(text),
                    content_hash=digest,
                    text=text,
                    version=version,
                )
            )
            offset += len(text) + 1
        document += 1
    return chunks


def synthetic_chunks(count: int, seed: int = TEXT_SEED, salt: str = "") -> list[Chunk]:
    """Generate ``count`` chunks (a multiple of 100), the same ones for the same seed."""
    if count % BLOCK:
        raise ValueError(f"sizes must be multiples of {BLOCK}")
    return [c for b in range(count // BLOCK) for c in _block(b, seed, salt)]


def random_unit_vectors(count: int, seed: int) -> np.ndarray:
    """Return ``count`` random unit vectors of the service model's dimension."""
    vectors = np.random.default_rng(seed).standard_normal((count, DIMENSION), dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def synthetic_queries(texts: Sequence[str], count: int, seed: int = QUERY_SEED) -> list[str]:
    """Draw ``count`` queries of 5–8 distinct non-stop words, each from one chunk's text."""
    from retriever_service.lexical import STOP_WORDS

    rng = np.random.default_rng(seed)
    queries = []
    while len(queries) < count:
        text = texts[int(rng.integers(len(texts)))]
        words = list(dict.fromkeys(w.strip(".").lower() for w in text.split()))
        words = [w for w in words if w not in STOP_WORDS]
        size = int(rng.integers(5, 9))
        if len(words) >= size:
            picked = rng.choice(len(words), size=size, replace=False)
            queries.append(" ".join(words[i] for i in picked))
    return queries


# -- the Chroma collection ----------------------------------------------------------------------


def store_spec() -> Any:
    from retriever_service.store import CollectionSpec

    return CollectionSpec(embedding_model="lexical-bench/random-unit", dimension=DIMENSION)


def build_chroma(path: Path, count: int) -> None:
    """Store ``count`` chunks in an embedded Chroma at ``path`` as the service stores them."""
    from retriever_service.store import ChromaStore, StoredChunk
    from retriever_service.versions import VersionRecord

    store = ChromaStore(store_spec(), path=str(path))
    store.ensure_collection(COLLECTION, create=True)
    # Create the (empty) write log now, so that later readers leave the cached copy unchanged.
    store.write_record_count()
    step = 5000
    for first in range(0, count, step):
        last = min(count, first + step)
        chunks = [c for b in range(first // BLOCK, last // BLOCK) for c in _block(b, TEXT_SEED)]
        vectors = random_unit_vectors(len(chunks), seed=first)
        store.upsert(
            COLLECTION,
            [
                StoredChunk(c.id, c.text, c.metadata(), vectors[k])  # type: ignore[arg-type]
                for k, c in enumerate(chunks)
            ],
        )
        store.put_versions(
            [
                VersionRecord(
                    collection=COLLECTION,
                    document_id=c.document_id,
                    version=c.version,
                    seq=1,
                    state="live",
                    content_hash=c.content_hash,
                    chunk_count=c.chunk_count,
                    ingested_at=1_700_000_000.0,
                )
                for c in chunks
                if c.position == 0
            ]
        )
    if store.count(COLLECTION) != count:
        raise RuntimeError(f"built {store.count(COLLECTION)} chunks, wanted {count}")


def cached_chroma(count: int, cache_dir: Path = CACHE_DIR) -> Path:
    """Return an embedded Chroma directory holding ``count`` chunks, building it once."""
    path = cache_dir / f"chroma-{count}-v{GENERATOR_VERSION}"
    if (path / "complete").exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    building = cache_dir / f"building-{count}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    print(f"building a Chroma collection of {count} chunks in {path} (once)...", flush=True)
    started = time.perf_counter()
    # In a child process: embedded Chroma keeps its files open for the life of its client.
    _run_worker(["--worker", "build", "--size", str(count), "--chroma", str(building)])
    (building / "complete").write_text(json.dumps({"chunks": count}))
    building.rename(path)
    print(f"built in {time.perf_counter() - started:.0f} s", flush=True)
    return path


# -- timing helpers -----------------------------------------------------------------------------


class Timers:
    """Accumulate the time spent in chosen methods of chosen objects."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - started

        setattr(owner, attribute, timed)

    def wrap_iterator(self, owner: Any, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Iterator[Any]:
            iterator = original(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.seconds[label] += time.perf_counter() - started
                yield item

        setattr(owner, attribute, timed)


def _rss() -> int:
    import psutil

    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _ms(samples: Sequence[float], q: float = 50) -> float:
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q)) * 1000 if samples else 0.0


def _sqlite_bytes(conn: sqlite3.Connection) -> int:
    page_count = conn.execute("PRAGMA page_count").fetchone()[0]
    return int(page_count * conn.execute("PRAGMA page_size").fetchone()[0])


def _file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


# -- 1. rebuild, in a fresh process per run -----------------------------------------------------


def _query_times(search: Callable[[str], Any], queries: Sequence[str]) -> list[float]:
    for query in queries[:5]:  # warm-up, not counted
        search(query)
    times = []
    for query in queries:
        started = time.perf_counter()
        search(query)
        times.append(time.perf_counter() - started)
    return times


def _index_query_figures(index: Any, queries: Sequence[str]) -> dict[str, list[float]]:
    """Time what one lexical or hybrid search asks of ``LexicalIndex``, call by call."""
    from retriever_service.lexical import _FTS_TABLE, query_terms

    terms = {q: query_terms(q) for q in queries}
    top = {q: [cid for cid, _ in index.search(COLLECTION, terms[q], 50)] for q in queries}
    # The FTS5 table alone, without the join to chunk ids: the library's own floor.
    collection_id = index._collection_id(COLLECTION, create=False)
    table = _FTS_TABLE.format(collection_id)
    bare_sql = (
        f"SELECT rowid, -bm25({table}) FROM {table} "  # noqa: S608 - generated from an int
        f"WHERE {table} MATCH ? ORDER BY rank LIMIT 50"
    )

    def bare(q: str) -> Any:
        expression = " OR ".join(f'"{t}"' for t in terms[q])
        return index._conn.execute(bare_sql, (expression,)).fetchall()

    return {
        "search": _query_times(lambda q: index.search(COLLECTION, terms[q], 50), queries),
        "search_200": _query_times(lambda q: index.search(COLLECTION, terms[q], 200), queries),
        "term_stats": _query_times(
            lambda q: index.term_stats(COLLECTION, terms[q], top[q][:TOP_K]), queries
        ),
        "count": _query_times(lambda q: index.count(COLLECTION), queries),
        "bare_fts5": _query_times(bare, queries),
    }


def measure_rebuild(
    variant: str,
    chroma_dir: Path,
    count: int,
    index_path: Path | None = None,
    queries: Sequence[str] = (),
) -> dict[str, Any]:
    """Run one rebuild variant in this process; return seconds, parts and memory."""
    if variant.startswith("service") or variant == "restart-file":
        return _measure_service_rebuild(variant, chroma_dir, count, index_path, queries)
    texts = [c.text for c in synthetic_chunks(count)]
    if variant.startswith("fts5"):
        return _measure_fts5(variant, texts, index_path)
    if variant == "bm25s":
        return _measure_bm25s(texts, queries)
    raise ValueError(f"unknown variant {variant!r}")


def _measure_service_rebuild(
    variant: str,
    chroma_dir: Path,
    count: int,
    index_path: Path | None,
    queries: Sequence[str],
) -> dict[str, Any]:
    from retriever_service.lexical import LexicalIndex
    from retriever_service.lexical_sync import LexicalSync
    from retriever_service.store import ChromaStore

    store = ChromaStore(store_spec(), path=str(chroma_dir))
    # Opening the client and the collection is start-up, not rebuild: done before the clock.
    store.ensure_collection(COLLECTION, create=False)
    store.write_record_count()
    if variant == "restart-file":
        if index_path is None or not index_path.exists():
            raise ValueError("restart-file needs the index file a service-file run left")
    elif index_path is not None:
        for stale in index_path.parent.glob(index_path.name + "*"):
            stale.unlink()
    rss_before = _rss()
    index = LexicalIndex(None if variant == "service-memory" else index_path)
    sync = LexicalSync(store, index)
    timers = Timers()
    timers.wrap_iterator(store, "scan_metadata", "scan")
    timers.wrap(store, "get_by_ids", "fetch")
    timers.wrap(index, "fingerprint", "fingerprint")
    timers.wrap(index, "replace_chunks", "insert")
    timers.wrap(index, "_insert", "fts_insert")
    timers.wrap(store, "write_record_count", "log_count")
    started = time.perf_counter()
    sync.ensure_fresh(COLLECTION)
    seconds = time.perf_counter() - started
    indexed = index.count(COLLECTION)
    if indexed != count:
        raise RuntimeError(f"{variant}: indexed {indexed} chunks, Chroma holds {count}")
    result: dict[str, Any] = {
        "variant": variant,
        "chunks": count,
        "seconds": seconds,
        "parts": dict(timers.seconds),
        "rss_growth": _rss() - rss_before,
    }
    if variant == "service-memory":
        result["index_bytes"] = _sqlite_bytes(index._conn)
    if queries:
        result["queries"] = _index_query_figures(index, queries)
    index.close()
    if variant != "service-memory" and index_path is not None:
        # Closing checkpoints the write-ahead log: what is left is the index's own size.
        result["file_bytes"] = _file_bytes(index_path)
    return result


def _measure_fts5(variant: str, texts: Sequence[str], index_path: Path | None) -> dict[str, Any]:
    path = ":memory:"
    if variant == "fts5-file":
        if index_path is None:
            raise ValueError("fts5-file needs an index path")
        for stale in index_path.parent.glob(index_path.name + "*"):
            stale.unlink()
        path = str(index_path)
    rss_before = _rss()
    conn = sqlite3.connect(path, isolation_level=None)
    if path != ":memory:":
        # As LexicalIndex opens its file, so that the two write alike.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{FTS_TOKENIZER}')")
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t (rowid, text) VALUES (?, ?)", enumerate(texts, start=1))
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "variant": variant,
        "chunks": len(texts),
        "seconds": seconds,
        "parts": {},
        "rss_growth": _rss() - rss_before,
        "index_bytes": _sqlite_bytes(conn),
    }
    conn.close()
    if path != ":memory:":
        result["file_bytes"] = _file_bytes(Path(path))
    return result


def _measure_bm25s(texts: Sequence[str], queries: Sequence[str]) -> dict[str, Any]:
    try:
        import bm25s
        import Stemmer
    except ImportError:
        return {"variant": "bm25s", "skipped": "bm25s / PyStemmer not installed"}
    stemmer = Stemmer.Stemmer("english")
    rss_before = _rss()
    started = time.perf_counter()
    tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, show_progress=False)
    tokenized = time.perf_counter()
    model = bm25s.BM25()
    model.index(tokens, show_progress=False)
    indexed = time.perf_counter()
    del tokens
    result: dict[str, Any] = {
        "variant": "bm25s",
        "chunks": len(texts),
        "seconds": indexed - started,
        "parts": {"tokenize": tokenized - started, "index": indexed - tokenized},
        "rss_growth": _rss() - rss_before,
        "index_bytes": sum(int(a.nbytes) for a in model.scores.values() if hasattr(a, "nbytes")),
    }
    if queries:

        def search(query: str) -> Any:
            query_tokens = bm25s.tokenize(
                [query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False
            )
            return model.retrieve(query_tokens, k=50, show_progress=False, n_threads=1)

        result["queries"] = {"bm25s": _query_times(search, queries)}
    return result


def _run_worker(args: Sequence[str]) -> dict[str, Any]:
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.lexical_bench", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed ({done.returncode}): {done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def rebuild_figures(
    sizes: Sequence[int], repeats: dict[int, int], workdir: Path, cache_dir: Path = CACHE_DIR
) -> dict[int, list[dict[str, Any]]]:
    """Run every rebuild variant at each size in its own process, interleaved, repeated."""
    queries = synthetic_queries([c.text for c in synthetic_chunks(2000)], 100)
    query_file = workdir / "queries.json"
    query_file.write_text(json.dumps(queries))
    runs: dict[int, list[dict[str, Any]]] = {}
    for size in sizes:
        chroma = cached_chroma(size, cache_dir)
        kept = cache_dir / f"lexical-{size}-v{GENERATOR_VERSION}.sqlite3"
        if not kept.exists():
            # The restart case needs a file index that matches Chroma: build it once, under
            # another name until complete, so that an interrupted build is not taken for one.
            building = kept.with_name(f"building-{os.getpid()}.sqlite3")
            _run_worker(_worker_args("service-file", size, chroma, building, None))
            building.rename(kept)
        runs[size] = []
        for repeat in range(repeats[size]):
            # Rotate the order so that no variant always runs first after a quiet spell.
            order = VARIANTS[repeat % len(VARIANTS) :] + VARIANTS[: repeat % len(VARIANTS)]
            for variant in order:
                path = kept if variant == "restart-file" else workdir / f"{variant}.sqlite3"
                with_queries = variant in ("restart-file", "bm25s", "service-memory")
                result = _run_worker(
                    _worker_args(variant, size, chroma, path, query_file if with_queries else None)
                )
                result["load"] = os.getloadavg()[0]
                runs[size].append(result)
                print(
                    f"  {size} chunks, {variant}: {result.get('seconds', float('nan')):.2f} s",
                    flush=True,
                )
    return runs


def _worker_args(
    variant: str, size: int, chroma: Path, index: Path | None, queries: Path | None
) -> list[str]:
    args = ["--worker", variant, "--size", str(size), "--chroma", str(chroma)]
    if index is not None:
        args += ["--index", str(index)]
    if queries is not None:
        args += ["--queries", str(queries)]
    return args


# -- 2. the consistency check per search --------------------------------------------------------


@contextlib.contextmanager
def chroma_server(path: Path, log_path: Path) -> Iterator[int]:
    """Run ``chroma run`` on a free port for the block; yield the port."""
    import requests

    from qa_common.process import free_port

    port = free_port()
    binary = Path(sys.executable).with_name("chroma")
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [str(binary), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chroma exited with {process.returncode}; see {log_path}")
            with contextlib.suppress(requests.RequestException):
                url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
                if requests.get(url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"chroma did not answer; see {log_path}")
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _changed_document(chunks: Sequence[Chunk], round_: int) -> list[Any]:
    """Return one document's chunks with new text and hash, as a replica would rewrite it."""
    from retriever_service.chunk_keys import CONTENT_HASH
    from retriever_service.store import StoredChunk

    document = chunks[(round_ * 37) % len(chunks)].document_id
    own = [c for c in chunks if c.document_id == document]
    vectors = random_unit_vectors(len(own), seed=10_000 + round_)
    rewritten = []
    for k, c in enumerate(own):
        metadata = {**c.metadata(), CONTENT_HASH: f"{round_:064x}"}
        text = f"{c.text} Revision {round_}."
        rewritten.append(StoredChunk(c.id, text, metadata, vectors[k]))  # type: ignore[arg-type]
    return rewritten


def freshness_figures(
    store_factory: Callable[[], Any], chunks: Sequence[Chunk], rounds: int, big_log: int
) -> dict[str, Any]:
    """Time ``ensure_fresh`` with nothing new and after one write by another replica."""
    from retriever_service.chunk_keys import DOCUMENT_ID
    from retriever_service.lexical import LexicalIndex
    from retriever_service.lexical_sync import LexicalSync

    reader_store, writer_store = store_factory(), store_factory()
    reader = LexicalSync(reader_store, LexicalIndex(None))
    writer = LexicalSync(writer_store, LexicalIndex(None))
    started = time.perf_counter()
    reader.ensure_fresh(COLLECTION)
    first_load = time.perf_counter() - started
    log_collection = reader_store._write_log()
    figures: dict[str, Any] = {"first_load_s": first_load, "rounds": rounds}

    def measure(label: str, first_round: int) -> None:
        unchanged, bare_count, after_write = [], [], []
        for round_ in range(first_round, first_round + rounds):
            # Alternate the order so that neither side always follows the write.
            steps = ["unchanged", "bare", "write"]
            for step in steps if round_ % 2 == 0 else steps[::-1]:
                if step == "unchanged":
                    started = time.perf_counter()
                    reader.ensure_fresh(COLLECTION)
                    unchanged.append(time.perf_counter() - started)
                elif step == "bare":
                    started = time.perf_counter()
                    log_collection.count()
                    bare_count.append(time.perf_counter() - started)
                else:
                    rewritten = _changed_document(chunks, round_)
                    writer_store.upsert(COLLECTION, rewritten)
                    writer.record_write(COLLECTION, [str(rewritten[0].metadata[DOCUMENT_ID])])
                    started = time.perf_counter()
                    reader.ensure_fresh(COLLECTION)
                    after_write.append(time.perf_counter() - started)
                    # The catch-up must have applied the write: the new words are findable.
                    found = reader.index.search(COLLECTION, [f"revision {round_}"], 5)
                    if rewritten[0].id not in {cid for cid, _ in found}:
                        raise RuntimeError("catch-up did not apply the other replica's write")
        figures[label] = {
            "log_records": reader_store.write_record_count(),
            "unchanged": unchanged,
            "bare_count": bare_count,
            "after_write": after_write,
        }

    measure("small_log", 0)
    if big_log:
        # A long-lived deployment's log: one record per write request ever made. Records of
        # another collection, added in bulk (the bench's shortcut), so the reader skips them.
        for first in range(0, big_log, 5000):
            n = min(5000, big_log - first)
            log_collection.add(
                ids=[f"bulk-{first + i}" for i in range(n)],
                embeddings=[[1.0]] * n,
                metadatas=[
                    {"collection": "other", "kind": "documents", "documents": "[]", "at": 0.0}
                ]
                * n,
            )
        started = time.perf_counter()
        reader.ensure_fresh(COLLECTION)
        figures["big_log_catch_up_s"] = time.perf_counter() - started
        measure("big_log", rounds)
    return figures


# -- 4. what record_write adds to an ingest request ---------------------------------------------


def write_overhead_figures(
    store: Any, index_path: Path | None, requests_: int, request_chunks: int = REQUEST_CHUNKS
) -> dict[str, Any]:
    """Time the Chroma upsert of each request and ``record_write`` of the same request."""
    from retriever_service.lexical import LexicalIndex
    from retriever_service.lexical_sync import LexicalSync, lexical_chunks
    from retriever_service.store import StoredChunk

    index = LexicalIndex(index_path)
    sync = LexicalSync(store, index)
    # Loaded, as in a retriever that has served a lexical search: writes update its index too.
    sync.ensure_fresh(COLLECTION)
    timers = Timers()
    timers.wrap(index, "replace_documents", "local_index")
    timers.wrap(store, "append_write_record", "log_append")
    per_request: dict[str, list[float]] = defaultdict(list)
    blocks = -(-request_chunks // BLOCK)
    for k in range(requests_):
        salt = f"-w{k}-{os.getpid()}"
        chunks = [c for b in range(blocks) for c in _block(b, TEXT_SEED + 1, salt)]
        chunks = chunks[:request_chunks]
        vectors = random_unit_vectors(len(chunks), seed=k)
        stored = [
            StoredChunk(c.id, c.text, c.metadata(), vectors[i])  # type: ignore[arg-type]
            for i, c in enumerate(chunks)
        ]
        documents = sorted({c.document_id for c in chunks})
        before = dict(timers.seconds)
        started = time.perf_counter()
        store.upsert(COLLECTION, stored)
        upserted = time.perf_counter()
        sync.record_write(COLLECTION, documents, chunks=lexical_chunks(stored))
        recorded = time.perf_counter()
        per_request["upsert"].append(upserted - started)
        per_request["record_write"].append(recorded - upserted)
        for label in ("local_index", "log_append"):
            per_request[label].append(timers.seconds[label] - before.get(label, 0.0))
    index.close()
    return {"requests": requests_, "chunks": request_chunks, **per_request}


# -- 3. search through the service --------------------------------------------------------------


def service_figures(texts: Sequence[str], queries: Sequence[str], workdir: Path) -> dict[str, Any]:
    """Ingest through a real gunicorn retriever and time its three search modes."""
    import chromadb
    from chromadb.config import Settings

    from bench.retriever_bench import BareModel, _bare_collection
    from qa_common.process import ServiceProcess
    from qa_common.retriever_client import RetrieverClient
    from retriever_service.config import load_config

    config = load_config()
    print("  loading the model as the service does...", flush=True)
    embedder = BareModel(
        config.embedding_model,
        config.embedding_dtype,
        config.embedding_device,
        config.embedding_batch_size,
    )
    service = ServiceProcess(
        "retriever_service",
        env={"CHROMA_PATH": str(workdir / "service-chroma"), "LOG_LEVEL": "WARNING"},
        log_path=workdir / "retriever.log",
    )
    figures: dict[str, Any] = {"chunks": len(texts), "queries": len(queries)}
    with service:
        service.wait_ready(timeout_s=300)
        client = RetrieverClient(service.url)
        warmup = list(texts[:REQUEST_CHUNKS])
        embedder.encode(warmup)
        client.ingest([{"id": f"w{i}", "text": t} for i, t in enumerate(warmup)], "bench-warmup")
        # Search the (empty) default collection first: its lexical index is then loaded, so
        # that each ingest below also updates it, as in a retriever that is serving searches.
        client.search("warm up", top_k=TOP_K, mode="hybrid")
        bare_s, service_s, vectors, chunks = [], [], [], 0
        for k, first in enumerate(range(0, len(texts), REQUEST_CHUNKS)):
            batch = list(texts[first : first + REQUEST_CHUNKS])
            documents = [{"id": f"c{first + i}", "text": t} for i, t in enumerate(batch)]
            for side in ("bare", "service") if k % 2 == 0 else ("service", "bare"):
                started = time.perf_counter()
                if side == "bare":
                    vectors.append(embedder.encode(batch))
                    bare_s.append(time.perf_counter() - started)
                else:
                    chunks += int(client.ingest(documents)["chunks"])
                    service_s.append(time.perf_counter() - started)
        figures.update(
            ingested_chunks=chunks,
            ingest_request_s=service_s,
            bare_encode_request_s=bare_s,
        )
        print(f"  ingested {chunks} chunks", flush=True)
        bare_chroma = chromadb.PersistentClient(
            path=str(workdir / "bare-chroma"), settings=Settings(anonymized_telemetry=False)
        )
        bare_collection, _ = _bare_collection(bare_chroma, "bare", texts, np.vstack(vectors))
        figures["search"] = _search_side_by_side(embedder, bare_collection, client, queries)
    return figures


def _search_side_by_side(
    embedder: Any, bare_collection: Any, client: Any, queries: Sequence[str]
) -> dict[str, dict[str, list[float]]]:
    samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def bare(text: str) -> None:
        started = time.perf_counter()
        vector = embedder.encode([text])[0]
        embedded = time.perf_counter()
        bare_collection.query(
            query_embeddings=[vector],
            n_results=TOP_K,
            include=["documents", "metadatas", "distances"],
        )
        done = time.perf_counter()
        samples["bare"]["client"].append(done - started)
        samples["bare"]["embed_ms"].append((embedded - started) * 1000)
        samples["bare"]["query_ms"].append((done - embedded) * 1000)

    def mode(name: str) -> Callable[[str], None]:
        def served(text: str) -> None:
            started = time.perf_counter()
            response = client.search(text, top_k=TOP_K, mode=name)
            samples[name]["client"].append(time.perf_counter() - started)
            for key in ("took_ms", "embed_ms", "query_ms", "lexical_sync_ms", "lexical_ms"):
                samples[name][key].append(float(response.get(key) or 0.0))
            samples[name]["hits"].append(len(response["results"]))

        return served

    callers = [bare, mode("dense"), mode("lexical"), mode("hybrid")]
    for text in queries[:5]:  # warm-up, not counted
        for call in callers:
            call(text)
    samples.clear()
    for i, text in enumerate(queries):
        # Rotate which goes first so that none always runs on a warmer cache.
        for call in callers[i % 4 :] + callers[: i % 4]:
            call(text)
    return {k: dict(v) for k, v in samples.items()}


# -- rendering ----------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def _mb(n: float) -> str:
    if n != n:
        return "–"
    return f"{n / 2**20:.0f}" if n >= 10 * 2**20 else f"{n / 2**20:.1f}"


def render_rebuild(runs: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Format the rebuild runs as a Markdown table, medians per size and variant."""
    labels = {
        "service-memory": "service: `ensure_fresh`, empty in-memory index",
        "service-file": "service: `ensure_fresh`, empty file index",
        "restart-file": "service: restart, file index already matches",
        "fts5-memory": "bare sqlite3 FTS5 bulk insert, memory",
        "fts5-file": "bare sqlite3 FTS5 bulk insert, file",
        "bm25s": "bm25s 0.3.16 tokenize + index (no update in place)",
    }
    lines = [
        "| chunks | what | s | chunks/s | Chroma scan s | Chroma text fetch s | index insert s "
        "(of which FTS5 rows) | other s | RSS growth MB | index MB (file MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, results in runs.items():
        for variant in VARIANTS:
            mine = [r for r in results if r.get("variant") == variant and "seconds" in r]
            if not mine:
                skipped = [r["skipped"] for r in results if r.get("variant") == variant]
                if skipped:
                    lines.append(f"| {size} | {labels[variant]} | skipped: {skipped[0]} |")
                continue
            seconds = _median([r["seconds"] for r in mine])

            def part(*names: str, runs_: list[dict[str, Any]] = mine) -> float:
                return _median([sum(r["parts"].get(n, 0.0) for n in names) for r in runs_])

            if variant == "bm25s":
                scan = fetch = "–"
                insert = f"{part('index'):.2f} (tokenize {part('tokenize'):.2f})"
                other = "–"
            elif variant.startswith("fts5"):
                scan = fetch = other = "–"
                insert = f"{seconds:.2f}"
            else:
                known = part("scan", "fetch", "insert", "fingerprint", "log_count")
                scan, fetch = f"{part('scan'):.2f}", f"{part('fetch'):.2f}"
                insert = f"{part('insert'):.2f} ({part('fts_insert'):.2f})"
                other = f"{max(0.0, seconds - known):.2f}"
            index_mb = _mb(_median([r.get("index_bytes", float("nan")) for r in mine]))
            file_mb = float("nan")
            if variant != "service-memory":
                file_mb = _median([r.get("file_bytes", float("nan")) for r in mine])
            memory = f"{index_mb} ({_mb(file_mb)})" if file_mb == file_mb else index_mb
            lines.append(
                f"| {size} | {labels[variant]} | {seconds:.2f} | {size / seconds:,.0f} | {scan} | "
                f"{fetch} | {insert} | {other} | "
                f"{_mb(_median([r['rss_growth'] for r in mine]))} | {memory} |"
            )
    return lines


def render_queries(runs: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Format per-call lexical query times, p50 / p95 ms over every repeat's queries."""
    columns = [
        ("search", "`LexicalIndex.search` top 50"),
        ("search_200", "`search` top 200 (hybrid's scoring read)"),
        ("term_stats", "`term_stats` (5 hits)"),
        ("count", "`count`"),
        ("bare_fts5", "bare FTS5 top 50 (no join)"),
        ("bm25s", "bm25s retrieve top 50"),
    ]
    lines = [
        "| chunks | index | " + " | ".join(label for _, label in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for size, results in runs.items():
        for variant, where in (("restart-file", "file"), ("service-memory", "memory")):
            pooled: dict[str, list[float]] = defaultdict(list)
            for r in results:
                if r.get("variant") in (variant, "bm25s"):
                    for key, values in r.get("queries", {}).items():
                        pooled[key] += values
            cells = [
                f"{_ms(pooled[k]):.2f} / {_ms(pooled[k], 95):.2f}" if pooled[k] else "–"
                for k, _ in columns
            ]
            lines.append(f"| {size} | {where} | " + " | ".join(cells) + " |")
    return lines


def render_freshness(figures: dict[str, dict[str, Any]]) -> list[str]:
    """Format the consistency-check timings per store."""
    lines = [
        "| store | log records | `ensure_fresh`, nothing new: p50 / p95 ms | bare log "
        "`count()` p50 ms | after one write by another replica: p50 / p95 ms |",
        "|---|---|---|---|---|",
    ]
    notes = []
    for store, f in figures.items():
        for label in ("small_log", "big_log"):
            if label not in f:
                continue
            g = f[label]
            lines.append(
                f"| {store} | {g['log_records']} | {_ms(g['unchanged']):.2f} / "
                f"{_ms(g['unchanged'], 95):.2f} | {_ms(g['bare_count']):.2f} | "
                f"{_ms(g['after_write']):.2f} / {_ms(g['after_write'], 95):.2f} |"
            )
        notes.append(
            f"{store}: first load (full reconcile into memory) {f['first_load_s']:.2f} s"
            + (
                f", first catch-up over the bulk-added log records {f['big_log_catch_up_s']:.2f} s"
                if "big_log_catch_up_s" in f
                else ""
            )
        )
    return [*lines, "", "; ".join(notes) + "."]


def render_service(figures: dict[str, Any]) -> list[str]:
    """Format search latency per mode with the target ratios."""
    search = figures["search"]
    bare = _ms(search["bare"]["client"])
    dense = _ms(search["dense"]["client"])
    lines = [
        "| mode | client p50 / p95 ms | / dense p50 | / bare p50 | server took / embed / query "
        "/ lexical_sync / lexical p50 ms | hits |",
        "|---|---|---|---|---|---|",
        f"| bare encode + `collection.query` | {bare:.1f} / {_ms(search['bare']['client'], 95):.1f}"
        f" | – | 1.00 | – / {_median(search['bare']['embed_ms']):.1f} / "
        f"{_median(search['bare']['query_ms']):.1f} / – / – | {TOP_K} |",
    ]
    for mode in ("dense", "lexical", "hybrid"):
        s = search[mode]
        p50 = _ms(s["client"])
        vs_dense = f"{p50 / dense:.2f}"
        if mode == "hybrid":
            vs_dense += f" (≤ {HYBRID_VS_DENSE}: {_mark(p50 / dense <= HYBRID_VS_DENSE)})"
        server = " / ".join(
            f"{_median(s[k]):.1f}"
            for k in ("took_ms", "embed_ms", "query_ms", "lexical_sync_ms", "lexical_ms")
        )
        lines.append(
            f"| {mode} | {p50:.1f} / {_ms(s['client'], 95):.1f} | {vs_dense} | {p50 / bare:.2f} | "
            f"{server} | {_median(s['hits']):.0f} |"
        )
    return lines


def render_writes(
    writes: dict[str, dict[str, Any]], service: dict[str, Any] | None
) -> tuple[list[str], list[str]]:
    """Format record_write against the upsert and the whole ingest request."""
    request_ms = _ms(service["ingest_request_s"]) if service else float("nan")
    lines = [
        f"| store / index | Chroma upsert of {REQUEST_CHUNKS} chunks p50 ms | `record_write` p50 "
        "ms (log append / local index) | record_write / upsert (median per request) | "
        f"est. ingest slowdown (≤ {INGEST_SLOWDOWN:.0%}) |",
        "|---|---|---|---|---|",
    ]
    verdicts = []
    for store, w in writes.items():
        ratio = _median([r / u for r, u in zip(w["record_write"], w["upsert"], strict=True)])
        record = _ms(w["record_write"])
        append = _ms(w["log_append"])
        # The service's requests above already paid the log append (and the local update):
        # without the lexical bookkeeping a request would take request_ms - record_write.
        slowdown = record / (request_ms - record) if request_ms == request_ms else float("nan")
        verdict = "–" if slowdown != slowdown else f"{slowdown:.1%} {_mark(slowdown <= 0.10)}"
        verdicts.append(verdict)
        lines.append(
            f"| {store} | {_ms(w['upsert']):.1f} | {record:.1f} ({append:.1f} / "
            f"{_ms(w['local_index']):.1f}) | {ratio:.2f} | {verdict} |"
        )
    return lines, verdicts


def render(results: dict[str, Any]) -> str:
    """Format every part that ran as one Markdown section."""
    load = results["load"]
    lines = [
        "## Lexical index and hybrid search (`python -m bench.lexical_bench`)",
        "",
        "Chunks: synthetic, 100–200 words each in sentences, words drawn with a Zipf law from "
        f"the {len(vocabulary()):,} whole words of the model's WordPiece vocabulary (one model "
        "token a word), in documents of 1–4 chunks, stored in an embedded Chroma as the service "
        "stores them (ids `doc:pos`, the service's metadata keys, random unit vectors of "
        f"dimension {DIMENSION}). Queries: 5–8 distinct non-stop words drawn from one chunk. "
        "Medians over interleaved repeats.",
    ]
    if "rebuild" in results:
        repeats = results["repeats"]
        lines += [
            "",
            "### 1. Lexical index rebuild from Chroma, against the bare libraries",
            "",
            "Each run in a fresh process (repeats: "
            + ", ".join(f"{s}: {n}" for s, n in repeats.items())
            + "). Service = `LexicalSync(store, LexicalIndex(path)).ensure_fresh(collection)`: "
            "scan = `scan_metadata` (ids + content hashes), fetch = `get_by_ids` (texts, 500 a "
            "call), insert = `replace_chunks` (rowid look-ups + FTS5 rows). RSS growth includes "
            "transient Python objects; index MB is SQLite's page count × page size (bm25s: its "
            "score arrays).",
            "",
            *render_rebuild(results["rebuild"]),
            "",
            "Lexical query time alone, p50 / p95 ms per call over 100 queries × repeats "
            "(bm25s in its own process):",
            "",
            *render_queries(results["rebuild"]),
        ]
    if "freshness" in results:
        f = results["freshness"]
        lines += [
            "",
            "### 2. Consistency check per lexical / hybrid search",
            "",
            f"`ensure_fresh` of a loaded {results['freshness_chunks']}-chunk collection, "
            f"{next(iter(f.values()))['rounds']} rounds each, interleaved with a bare "
            "`count()` of the write-log collection, and after another replica rewrote one "
            "document (its upsert + `record_write`, untimed): the reader's catch-up = count + "
            "read one record + `get(where=document)` + index replace.",
            "",
            *render_freshness(f),
        ]
    if "service" in results:
        s = results["service"]
        lines += [
            "",
            "### 3. Search latency through the service",
            "",
            f"A real gunicorn retriever (embedded Chroma, file lexical index, default dtype), "
            f"{s['ingested_chunks']} chunks ingested through `POST /v1/documents`, "
            f"{s['queries']} queries per mode, top_k={TOP_K}, the four callers rotated per "
            "query; bare = query encode + `collection.query` on a `PersistentClient` holding the "
            "same vectors.",
            "",
            *render_service(s),
        ]
    if "writes" in results:
        write_lines, _ = render_writes(results["writes"], results.get("service"))
        request = (
            f" A {REQUEST_CHUNKS}-chunk `POST /v1/documents` took "
            f"{_ms(results['service']['ingest_request_s']):.0f} ms (p50) in part 3, with its "
            f"own `record_write`; the slowdown is record_write ÷ (request − record_write)."
            if "service" in results
            else ""
        )
        lines += [
            "",
            "### 4. Ingestion: what the lexical bookkeeping adds",
            "",
            f"{results['write_requests']} requests of {REQUEST_CHUNKS} new chunks (documents of "
            "1–4 chunks), into a collection whose lexical index is loaded (as after a first "
            f"search).{request}",
            "",
            *write_lines,
        ]
    lines += [
        "",
        f"{results.get('machine') or machine_line()} 2 cores shared with other work: "
        "1-minute load average "
        f"{load[0]:.1f} at the start, {load[1]:.1f} at the end. Whole run: "
        f"{results['seconds'] / 60:.1f} min.",
    ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def _worker_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING)
    if args.worker == "build":
        build_chroma(Path(args.chroma), args.size)
        print(json.dumps({"built": args.size}))
        return 0
    queries = json.loads(Path(args.queries).read_text()) if args.queries else []
    result = measure_rebuild(
        args.worker,
        Path(args.chroma),
        args.size,
        Path(args.index) if args.index else None,
        queries,
    )
    print(json.dumps(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.lexical_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--sizes", nargs="+", type=int, default=list(FULL_SIZES))
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    parser.add_argument("--queries-count", type=int, default=QUERIES, help=argparse.SUPPRESS)
    parser.add_argument(
        "--repeats", type=int, help="rebuild runs per variant (default: 5 at 10k, 3 above)"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["rebuild", "fresh", "service"])
    parser.add_argument("--cache-dir", default=str(CACHE_DIR))
    parser.add_argument(
        "--render-only", metavar="RAW_JSON", help="re-render a run's raw figures, measure nothing"
    )
    # The per-run subprocesses of part 1 re-enter here.
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--chroma", help=argparse.SUPPRESS)
    parser.add_argument("--index", help=argparse.SUPPRESS)
    parser.add_argument("--queries", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    if args.worker:
        return _worker_main(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cache_dir = Path(args.cache_dir)
    sizes = sorted(args.sizes)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    raw = cache_dir / "last-run.json"
    if args.render_only:
        results = load_raw(Path(args.render_only))
    else:
        results = _run_parts(args, sizes, cache_dir, raw)
        results["load"] = (load_start, os.getloadavg()[0])
        results["seconds"] = time.perf_counter() - started
        # Kept with the figures, so that a re-render (--render-only) dates them as measured.
        results["machine"] = machine_line()
        raw.write_text(json.dumps(results, default=str))
    markdown = render(results)
    print()
    print(markdown)
    print(f"\nraw figures: {args.render_only or raw}")
    if not args.no_docs:
        write_section(SECTION, markdown)
        print(f"wrote docs/benchmarks.md (section {SECTION})")
    return 0


def _run_parts(
    args: argparse.Namespace, sizes: Sequence[int], cache_dir: Path, raw: Path
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lexical-bench-") as tmp:
        workdir = Path(tmp)
        if "rebuild" not in args.skip:
            print("1. rebuild", flush=True)
            results["repeats"] = {s: args.repeats or (5 if s <= 20_000 else 3) for s in sizes}
            results["rebuild"] = rebuild_figures(sizes, results["repeats"], workdir, cache_dir)
            # Kept after each part: a long run cut short still leaves what it measured.
            raw.write_text(json.dumps(results, default=str))
        fresh_size = min(sizes[0], SERVICE_SIZE)
        if "fresh" not in args.skip:
            print("2. consistency check, 4. record_write", flush=True)
            results.update(_fresh_and_writes(fresh_size, workdir, cache_dir))
            raw.write_text(json.dumps(results, default=str))
        if "service" not in args.skip:
            print("3. search through the service", flush=True)
            size = min(sizes[0], SERVICE_SIZE)
            texts = [c.text for c in synthetic_chunks(size)]
            queries = synthetic_queries(texts, args.queries_count, seed=QUERY_SEED + 1)
            results["service"] = service_figures(texts, queries, workdir)
    return results


def load_raw(path: Path) -> dict[str, Any]:
    """Read a run's raw figures back (JSON turned the sizes into strings)."""
    results = json.loads(path.read_text())
    for key in ("repeats", "rebuild"):
        if key in results:
            results[key] = {int(size): value for size, value in results[key].items()}
    return results


def _fresh_and_writes(size: int, workdir: Path, cache_dir: Path) -> dict[str, Any]:
    """Run parts 2 and 4 on copies of the cached collection: embedded, then a Chroma server."""
    from retriever_service.store import ChromaStore

    source = cached_chroma(size, cache_dir)
    chunks = synthetic_chunks(size)
    rounds, big_log, requests_ = (60, 10_000, 12) if size >= 1000 else (6, 200, 2)
    out: dict[str, Any] = {
        "freshness_chunks": size,
        "write_requests": requests_,
        "freshness": {},
        "writes": {},
    }
    embedded = workdir / "embedded-chroma"
    shutil.copytree(source, embedded)
    out["freshness"]["embedded Chroma"] = freshness_figures(
        lambda: ChromaStore(store_spec(), path=str(embedded)), chunks, rounds, big_log
    )
    out["writes"]["embedded Chroma / file index (service default)"] = write_overhead_figures(
        ChromaStore(store_spec(), path=str(embedded)), workdir / "writes.sqlite3", requests_
    )
    served = workdir / "server-chroma"
    shutil.copytree(source, served)
    with chroma_server(served, workdir / "chroma-server.log") as port:

        def remote() -> ChromaStore:
            return ChromaStore(store_spec(), host="127.0.0.1", port=port)

        out["freshness"]["`chroma run` server"] = freshness_figures(remote, chunks, rounds, big_log)
        out["writes"]["`chroma run` server / in-memory index (service default)"] = (
            write_overhead_figures(remote(), None, requests_)
        )
    return out


if __name__ == "__main__":
    sys.exit(main())
