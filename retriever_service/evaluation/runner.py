"""Ingest a dataset into a running retriever over HTTP, search every query and score it.

``client`` is anything with the methods of ``qa_common.retriever_client.RetrieverClient`` used
here (``ingest``, ``search``, ``stats``, ``delete_collection``, ``request_json``), so the tests
can pass a fake.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from qa_common.errors import ServiceError
from retriever_service.evaluation.dataset import SPLIT_SEED, Dataset, select_queries
from retriever_service.evaluation.metrics import (
    mean_scores,
    percentile_ms,
    rank_documents,
    score_query,
)

log = logging.getLogger("retriever_service.evaluate")

# Chunks asked for per query: more than the 10 documents scored, since one document may hold
# several of the nearest chunks; 50 is the API's ceiling.
SEARCH_TOP_K = 50
# Documents per ingest request, and a cap on their characters well below the 16 MiB body limit.
INGEST_BATCH_DOCS = 32
INGEST_BATCH_CHARS = 2_000_000
MODES = ("dense", "lexical", "hybrid")
FUSIONS = ("rrf", "weighted")
SWEEP_WEIGHTS = tuple(round(step / 10, 1) for step in range(1, 10))
# Settings recorded from GET /v1/stats when the retriever reports them.
STATS_SETTINGS = (
    "model",
    "dtype",
    "max_chunk_tokens",
    "chunk_overlap_tokens",
    "store",
    "fusion",
    "dense_weight",
)


class CollectionExists(RuntimeError):
    """The evaluation collection is already on the retriever and reusing it was not allowed."""

    def __init__(self, name: str, documents: int | None) -> None:
        held = (
            f"it holds {documents} document{'' if documents == 1 else 's'}"
            if documents is not None
            else "it exists"
        )
        super().__init__(
            f"collection {name!r} is already on the retriever ({held}); the evaluation will "
            "not write into or delete a collection it did not create. Pass --collection NAME "
            "for a fresh one, or --reuse to ingest the dataset into this one and evaluate "
            "there (it is then kept)"
        )
        self.name = name
        self.documents = documents


@dataclass(frozen=True)
class SearchSetting:
    """One way of searching: a mode, and for hybrid the fusion and dense weight (or defaults)."""

    mode: str
    fusion: str | None = None
    dense_weight: float | None = None

    @property
    def label(self) -> str:
        """Name the setting in one short cell."""
        return setting_label(self.mode, self.fusion, self.dense_weight)

    def options(self) -> dict[str, Any]:
        """Return the search body fields this setting sends."""
        body: dict[str, Any] = {"mode": self.mode}
        if self.fusion is not None:
            body["fusion"] = self.fusion
        if self.dense_weight is not None:
            body["dense_weight"] = self.dense_weight
        return body


def setting_label(
    mode: str, fusion: str | None, dense_weight: float | None, *, server_default: bool = False
) -> str:
    """Name a search setting in one short cell, e.g. "hybrid (rrf, w=0.5)"."""
    parts = [p for p in (fusion, None if dense_weight is None else f"w={dense_weight:g}") if p]
    if parts and server_default:
        parts.append("default")
    return f"{mode} ({', '.join(parts)})" if parts else mode


def mode_settings(
    modes: Sequence[str], *, fusion: str | None = None, dense_weight: float | None = None
) -> list[SearchSetting]:
    """Return one setting per mode; the fusion options go to hybrid only."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown search modes {unknown}; expected some of {MODES}")
    return [
        SearchSetting(m, fusion, dense_weight) if m == "hybrid" else SearchSetting(m)
        for m in dict.fromkeys(modes)
    ]


def sweep_settings() -> list[SearchSetting]:
    """Return every hybrid setting of the weight sweep: each fusion at each dense weight."""
    return [SearchSetting("hybrid", f, w) for f in FUSIONS for w in SWEEP_WEIGHTS]


@dataclass
class ModeResult:
    """What one search setting measured over the evaluated queries."""

    mode: str
    fusion: str | None
    dense_weight: float | None
    label: str
    metrics: dict[str, float]
    latency_p50_ms: float
    latency_p99_ms: float
    server_p50_ms: float


@dataclass
class EvalResult:
    """What one evaluation run measured: the collection once, then each search setting."""

    dataset: str
    collection: str
    documents: int
    chunks: int
    qrels: str
    query_split: str
    split_seed: str
    queries: int
    judged_queries: int
    ingest_s: float
    settings: dict[str, Any]
    runs: list[ModeResult] = field(default_factory=list)
    sweep: list[ModeResult] = field(default_factory=list)

    def run(self, label: str) -> ModeResult:
        """Return the result of the setting with this label."""
        for result in self.runs:
            if result.label == label:
                return result
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready data (NaN becomes null)."""
        return _finite(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalResult:
        """Rebuild a result that ``to_dict`` wrote."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        for key in ("runs", "sweep"):
            values[key] = [_mode_result(r) for r in data.get(key, [])]
        return cls(**values)


def _mode_result(data: Mapping[str, Any]) -> ModeResult:
    names = {f.name for f in dataclasses.fields(ModeResult)}
    values = {k: v for k, v in data.items() if k in names}
    for key in ("latency_p50_ms", "latency_p99_ms", "server_p50_ms"):
        if values.get(key) is None:
            values[key] = float("nan")
    return ModeResult(**values)


def _finite(value: Any) -> Any:
    # JSON has no NaN; a missing latency is written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


# -- the collection ---------------------------------------------------------------------------


def collection_names(client: Any) -> set[str]:
    """Return the names of the collections the retriever holds."""
    return set(client.request_json("GET", "/v1/collections").get("collections", []))


def _documents_in(client: Any, collection: str) -> int | None:
    try:
        return int(client.stats(collection).get("documents", 0))
    except (ServiceError, ValueError, TypeError):
        return None


@contextmanager
def evaluation_collection(
    client: Any, name: str, *, reuse: bool = False, keep: bool = False
) -> Iterator[bool]:
    """Yield whether this run creates ``name``; delete it afterwards only then, unless ``keep``.

    Raise ``CollectionExists`` when the collection is already there and ``reuse`` is false.
    """
    existed = name in collection_names(client)
    if existed and not reuse:
        raise CollectionExists(name, _documents_in(client, name))
    try:
        yield not existed
    finally:
        if not existed and not keep:
            try:
                client.delete_collection(name)
            except ServiceError as exc:
                log.warning("could not delete the evaluation collection %s: %s", name, exc)


# -- ingesting and searching ------------------------------------------------------------------


def _ingest_batches(corpus: Mapping[str, str]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    chars = 0
    for doc_id, text in corpus.items():
        if batch and (len(batch) >= INGEST_BATCH_DOCS or chars + len(text) > INGEST_BATCH_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append({"id": doc_id, "text": text})
        chars += len(text)
    if batch:
        yield batch


def ingest_corpus(client: Any, dataset: Dataset, collection: str, *, progress: bool) -> int:
    """Send the corpus in batches; return the number of chunks the collection holds for it."""
    chunks = 0
    with tqdm(total=len(dataset.corpus), unit="doc", desc="ingesting", disable=not progress) as bar:
        for batch in _ingest_batches(dataset.corpus):
            response = client.ingest(batch, collection)
            # An unchanged document (a reused collection) reports its stored chunk count.
            chunks += sum(int(r["chunks"]) for r in response.get("results", []))
            bar.update(len(batch))
    return chunks


def run_queries(
    client: Any,
    dataset: Dataset,
    query_ids: Sequence[str],
    collection: str,
    settings: Sequence[SearchSetting],
    *,
    top_k: int,
    progress: bool,
) -> list[ModeResult]:
    """Search every query with every setting; return one scored result per setting."""
    scores: list[list[dict[str, float]]] = [[] for _ in settings]
    client_s: list[list[float]] = [[] for _ in settings]
    server_ms: list[list[float]] = [[] for _ in settings]
    reported: list[Mapping[str, Any]] = [{} for _ in settings]
    if query_ids:
        # Untimed: the first search of a mode may build a lazy index or warm a cache.
        for index, setting in enumerate(settings):
            reported[index] = client.search(
                dataset.queries[query_ids[0]],
                top_k=top_k,
                collection=collection,
                **setting.options(),
            )
    total = len(query_ids) * len(settings)
    with tqdm(total=total, unit="search", desc="searching", disable=not progress) as bar:
        for query_id in query_ids:
            # The settings take turns on each query, so load from other work falls on all alike.
            for index, setting in enumerate(settings):
                started = time.perf_counter()
                response = client.search(
                    dataset.queries[query_id],
                    top_k=top_k,
                    collection=collection,
                    **setting.options(),
                )
                client_s[index].append(time.perf_counter() - started)
                server_ms[index].append(float(response.get("took_ms", float("nan"))))
                ranked = rank_documents(response["results"])
                scores[index].append(score_query(ranked, dataset.qrels[query_id]))
                bar.update()
    return [
        ModeResult(
            **_effective(setting, reported[index]),
            metrics=mean_scores(scores[index]),
            latency_p50_ms=percentile_ms(client_s[index], 50),
            latency_p99_ms=percentile_ms(client_s[index], 99),
            server_p50_ms=_nanmedian(server_ms[index]),
        )
        for index, setting in enumerate(settings)
    ]


def _effective(setting: SearchSetting, response: Mapping[str, Any]) -> dict[str, Any]:
    # A retriever with hybrid search echoes the fusion and weight it used, so a run that left
    # them to the server still records which they were.
    fusion = setting.fusion or response.get("fusion")
    weight = setting.dense_weight
    if weight is None and isinstance(response.get("dense_weight"), int | float):
        weight = float(response["dense_weight"])
    chosen_by_server = (fusion, weight) != (setting.fusion, setting.dense_weight)
    return {
        "mode": setting.mode,
        "fusion": fusion,
        "dense_weight": weight,
        "label": setting_label(setting.mode, fusion, weight, server_default=chosen_by_server),
    }


def _nanmedian(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def evaluate(
    client: Any,
    dataset: Dataset,
    collection: str,
    *,
    settings: Sequence[SearchSetting] | None = None,
    sweep: Sequence[SearchSetting] = (),
    query_split: str = "all",
    top_k: int = SEARCH_TOP_K,
    progress: bool = True,
) -> EvalResult:
    """Ingest one dataset once, then search and score its queries with every setting."""
    settings = list(settings) if settings is not None else mode_settings(MODES)
    query_ids = select_queries(dataset.judged_queries, query_split)
    started = time.perf_counter()
    chunks = ingest_corpus(client, dataset, collection, progress=progress)
    ingest_s = time.perf_counter() - started
    stats = client.stats(collection)
    if int(stats.get("documents", 0)) > len(dataset.corpus):
        log.warning(
            "collection %s holds %s documents, more than the corpus's %d: documents that are "
            "not in the dataset compete in the ranking",
            collection,
            stats.get("documents"),
            len(dataset.corpus),
        )
    results = run_queries(
        client,
        dataset,
        query_ids,
        collection,
        [*settings, *sweep],
        top_k=top_k,
        progress=progress,
    )
    return EvalResult(
        dataset=dataset.name,
        collection=collection,
        documents=len(dataset.corpus),
        chunks=chunks,
        qrels=dataset.qrels_path.name,
        query_split=query_split,
        split_seed=SPLIT_SEED,
        queries=len(query_ids),
        judged_queries=len(dataset.judged_queries),
        ingest_s=ingest_s,
        settings={key: stats.get(key) for key in STATS_SETTINGS if key in stats},
        runs=results[: len(settings)],
        sweep=results[len(settings) :],
    )
