"""Measure retrieval quality on a BEIR dataset: ``python -m retriever_service.evaluate DIR``.

Ingests the dataset's corpus through the retriever's HTTP API into a collection of its own, runs
every judged query through ``/v1/search``, maps chunks back to documents (a document ranks by its
best chunk) and prints nDCG@10, Recall@1/5/10, MRR@10 and the client-measured search latency.
Without ``--url`` it starts a temporary retriever under gunicorn on an empty store, with this
process's environment (so ``EMBEDDING_DTYPE=float32 python -m retriever_service.evaluate DIR``
measures fp32), and stops it afterwards.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from qa_common.errors import ServiceError

log = logging.getLogger("retriever_service.evaluate")

Qrels = dict[str, dict[str, int]]

# Chunks asked for per query: more than the 10 documents scored, since one document may hold
# several of the nearest chunks; 50 is the API's ceiling.
SEARCH_TOP_K = 50
# Documents per ingest request, and a cap on their characters well below the 16 MiB body limit.
INGEST_BATCH_DOCS = 32
INGEST_BATCH_CHARS = 2_000_000
METRIC_KEYS = ("ndcg@10", "recall@1", "recall@5", "recall@10", "mrr@10")

# Published figures to compare against, keyed by dataset folder name and model. Source:
# github.com/embeddings-benchmark/results, sentence-transformers__all-MiniLM-L6-v2,
# XQuADRetrieval.json (en), as quoted in ../shared/eval/README.md.
REFERENCE_FIGURES: dict[tuple[str, str], dict[str, float]] = {
    ("xquad-en", "sentence-transformers/all-MiniLM-L6-v2"): {
        "ndcg@10": 0.9436,
        "recall@1": 0.8852,
        "recall@5": 0.9814,
        "recall@10": 0.9899,
        "mrr@10": 0.9281,
    },
}
REFERENCE_SOURCE = "MTEB XQuADRetrieval (en), embeddings-benchmark/results"
# The bar: a correct pipeline lands this close to the published figures.
REFERENCE_TOLERANCE = 0.02
# Largest bf16-vs-fp32 nDCG@10 gap at which bf16 counts as "the same retrieval quality".
DTYPE_TOLERANCE = 0.001
DOCS_SECTION = "retriever-eval"


class DatasetError(ValueError):
    """The dataset folder is missing a file or holds a malformed record."""


# -- metrics ----------------------------------------------------------------------------------


def _relevant(judgements: Mapping[str, int]) -> set[str]:
    return {doc for doc, grade in judgements.items() if grade > 0}


def _unique(ranked: Iterable[str]) -> list[str]:
    # A document listed twice counts once, at its first (best) rank.
    return list(dict.fromkeys(ranked))


def ndcg_at_k(ranked: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Return nDCG@k with graded gains (linear gain, log2 discount, as trec_eval's ndcg_cut)."""
    gains = [max(judgements.get(doc, 0), 0) for doc in _unique(ranked)[:k]]
    dcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(gains))
    ideal = sorted((g for g in judgements.values() if g > 0), reverse=True)[:k]
    idcg = sum(gain / math.log2(rank + 2) for rank, gain in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Return the share of the relevant documents found in the top k."""
    relevant = _relevant(judgements)
    if not relevant:
        return 0.0
    return len(relevant.intersection(_unique(ranked)[:k])) / len(relevant)


def mrr_at_k(ranked: Sequence[str], judgements: Mapping[str, int], k: int) -> float:
    """Return 1/rank of the first relevant document in the top k, or 0 when none is there."""
    relevant = _relevant(judgements)
    for rank, doc in enumerate(_unique(ranked)[:k], start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def score_query(ranked: Sequence[str], judgements: Mapping[str, int]) -> dict[str, float]:
    """Return every reported metric for one query."""
    return {
        "ndcg@10": ndcg_at_k(ranked, judgements, 10),
        "recall@1": recall_at_k(ranked, judgements, 1),
        "recall@5": recall_at_k(ranked, judgements, 5),
        "recall@10": recall_at_k(ranked, judgements, 10),
        "mrr@10": mrr_at_k(ranked, judgements, 10),
    }


def mean_scores(per_query: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-query metrics over queries."""
    if not per_query:
        return dict.fromkeys(METRIC_KEYS, 0.0)
    return {key: float(np.mean([scores[key] for scores in per_query])) for key in METRIC_KEYS}


def rank_documents(hits: Iterable[Mapping[str, Any]]) -> list[str]:
    """Turn chunk hits into a document ranking: each document at its best chunk's score."""
    best: dict[str, float] = {}
    for hit in hits:
        doc, score = str(hit["document_id"]), float(hit["score"])
        if doc not in best or score > best[doc]:
            best[doc] = score
    # sorted() is stable: equal scores keep the order the service returned them in.
    return sorted(best, key=lambda doc: -best[doc])


def percentile_ms(samples_s: Sequence[float], q: float) -> float:
    """Return a latency percentile in milliseconds."""
    return float(np.percentile(np.asarray(samples_s) * 1000, q)) if samples_s else float("nan")


# -- dataset ----------------------------------------------------------------------------------


@dataclass
class Dataset:
    """A BEIR dataset in memory: texts to index, queries, and judgements."""

    name: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels
    qrels_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def judged_queries(self) -> list[str]:
        """Return the ids of queries with at least one relevant document, in file order."""
        return [q for q in self.queries if _relevant(self.qrels.get(q, {}))]


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if not path.is_file():
        raise DatasetError(f"{path} is missing")
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{path}:{number}: a record must be a JSON object")
            yield number, record


def _field(record: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool) and key == "_id":
        return str(value)
    if not isinstance(value, str) or (required and not value.strip()):
        raise DatasetError(f"{where}: field {key!r} must be a non-empty string")
    return value


def document_text(title: str, text: str) -> str:
    """Join a BEIR title in front of the text, as MTEB does for sentence-transformers models."""
    return f"{title.strip()} {text}".strip() if title and title.strip() else text


def pick_qrels(folder: Path, split: str) -> tuple[Path, list[str]]:
    """Choose the qrels file: ``<split>.tsv``, else the only (or first) one."""
    qrels_dir = folder / "qrels"
    files = sorted(qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
    if not files:
        raise DatasetError(f"{qrels_dir} holds no .tsv qrels file")
    wanted = qrels_dir / f"{split}.tsv"
    if wanted in files:
        return wanted, []
    notes = []
    if len(files) > 1:
        notes.append(
            f"no qrels/{split}.tsv; using {files[0].name} of {', '.join(f.name for f in files)}"
        )
    return files[0], notes


def read_qrels(path: Path) -> Qrels:
    """Read ``query-id<TAB>corpus-id<TAB>score`` rows; the header line is skipped."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            cells = line.rstrip("\r\n").split("\t")
            if len(cells) != 3:
                raise DatasetError(
                    f"{path}:{number}: expected 3 tab-separated columns "
                    f"(query-id, corpus-id, score), found {len(cells)}"
                )
            query_id, doc_id, grade = (cell.strip() for cell in cells)
            try:
                score = int(float(grade))
            except ValueError:
                if number == 1:  # the header line
                    continue
                raise DatasetError(f"{path}:{number}: score {grade!r} is not a number") from None
            if not query_id or not doc_id:
                raise DatasetError(f"{path}:{number}: empty query or corpus id")
            qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise DatasetError(f"{path} holds no judgements")
    return qrels


def load_dataset(folder: Path | str, split: str = "test") -> Dataset:
    """Read a BEIR-layout folder; raise ``DatasetError`` naming the file and line on bad input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a directory")
    corpus: dict[str, str] = {}
    for number, record in _jsonl(folder / "corpus.jsonl"):
        where = f"{folder / 'corpus.jsonl'}:{number}"
        doc_id = _field(record, "_id", where)
        if doc_id in corpus:
            raise DatasetError(f"{where}: document id {doc_id!r} appears twice")
        text = _field(record, "text", where)
        corpus[doc_id] = document_text(_field(record, "title", where, required=False), text)
    if not corpus:
        raise DatasetError(f"{folder / 'corpus.jsonl'} holds no documents")
    queries: dict[str, str] = {}
    for number, record in _jsonl(folder / "queries.jsonl"):
        where = f"{folder / 'queries.jsonl'}:{number}"
        query_id = _field(record, "_id", where)
        if query_id in queries:
            raise DatasetError(f"{where}: query id {query_id!r} appears twice")
        queries[query_id] = _field(record, "text", where)
    qrels_path, notes = pick_qrels(folder, split)
    qrels = read_qrels(qrels_path)
    unknown_queries = sorted(set(qrels) - set(queries))
    if unknown_queries:
        raise DatasetError(
            f"{qrels_path}: {len(unknown_queries)} query ids are not in queries.jsonl, "
            f"e.g. {unknown_queries[:3]}"
        )
    unknown_docs = sorted({d for j in qrels.values() for d in j if d not in corpus})
    if unknown_docs:
        # They stay in the judgements (a retriever can never find them, so recall says so).
        notes.append(
            f"{len(unknown_docs)} judged document ids are not in corpus.jsonl, "
            f"e.g. {unknown_docs[:3]}"
        )
    dataset = Dataset(folder.resolve().name, corpus, queries, qrels, qrels_path, notes)
    if not dataset.judged_queries:
        raise DatasetError(f"{qrels_path}: no query has a relevant document (score > 0)")
    return dataset


def default_collection(dataset_name: str) -> str:
    """Return the eval collection for a dataset, made a valid Chroma collection name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", dataset_name).strip("-._") or "dataset"
    return f"eval-{slug}"[:512]


# -- running against a retriever --------------------------------------------------------------


@dataclass
class EvalResult:
    """What one evaluation run measured."""

    dataset: str
    collection: str
    documents: int
    chunks: int
    queries: int
    metrics: dict[str, float]
    latency_p50_ms: float
    latency_p99_ms: float
    server_p50_ms: float
    ingest_s: float
    settings: dict[str, Any]


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
            # An unchanged document (a kept collection) reports its stored chunk count.
            chunks += sum(int(r["chunks"]) for r in response.get("results", []))
            bar.update(len(batch))
    return chunks


def run_queries(
    client: Any, dataset: Dataset, collection: str, *, top_k: int, progress: bool
) -> tuple[list[dict[str, float]], list[float], list[float]]:
    """Search every judged query; return per-query scores, client and server latencies."""
    per_query: list[dict[str, float]] = []
    client_s: list[float] = []
    server_ms: list[float] = []
    query_ids = dataset.judged_queries
    for query_id in tqdm(query_ids, unit="query", desc="searching", disable=not progress):
        started = time.perf_counter()
        response = client.search(dataset.queries[query_id], top_k=top_k, collection=collection)
        client_s.append(time.perf_counter() - started)
        server_ms.append(float(response.get("took_ms", float("nan"))))
        ranked = rank_documents(response["results"])
        per_query.append(score_query(ranked, dataset.qrels[query_id]))
    return per_query, client_s, server_ms


def evaluate(
    client: Any, dataset: Dataset, collection: str, *, top_k: int, progress: bool = True
) -> EvalResult:
    """Ingest, search and score one dataset against a running retriever."""
    started = time.perf_counter()
    chunks = ingest_corpus(client, dataset, collection, progress=progress)
    ingest_s = time.perf_counter() - started
    stats = client.stats(collection)
    if int(stats.get("documents", 0)) > len(dataset.corpus):
        log.warning(
            "collection %s holds %s documents, more than the corpus's %d: stale documents "
            "from an earlier run compete in the ranking",
            collection,
            stats.get("documents"),
            len(dataset.corpus),
        )
    per_query, client_s, server_ms = run_queries(
        client, dataset, collection, top_k=top_k, progress=progress
    )
    return EvalResult(
        dataset=dataset.name,
        collection=collection,
        documents=len(dataset.corpus),
        chunks=chunks,
        queries=len(per_query),
        metrics=mean_scores(per_query),
        latency_p50_ms=percentile_ms(client_s, 50),
        latency_p99_ms=percentile_ms(client_s, 99),
        server_p50_ms=float(np.nanmedian(server_ms)) if server_ms else float("nan"),
        ingest_s=ingest_s,
        settings={
            "model": stats.get("model"),
            "dtype": stats.get("dtype"),
            "max_chunk_tokens": stats.get("max_chunk_tokens"),
            "chunk_overlap_tokens": stats.get("chunk_overlap_tokens"),
            "store": stats.get("store"),
        },
    )


# -- reporting --------------------------------------------------------------------------------


def reference_for(result: EvalResult) -> dict[str, float] | None:
    """Return the published figures for this dataset and model, when known."""
    return REFERENCE_FIGURES.get((result.dataset, str(result.settings.get("model"))))


def render(result: EvalResult) -> str:
    """Format one run's figures for the terminal."""
    s = result.settings
    reference = reference_for(result)
    lines = [
        f"dataset:    {result.dataset} ({result.documents} documents -> {result.chunks} chunks, "
        f"{result.queries} judged queries)",
        f"model:      {s['model']} ({s['dtype']}), chunks <= {s['max_chunk_tokens']} tokens, "
        f"overlap {s['chunk_overlap_tokens']}",
        f"ingestion:  {result.ingest_s:.1f}s",
        "",
        f"{'metric':<11}{'measured':>10}" + (f"{'published':>11}{'diff':>9}" if reference else ""),
    ]
    for key in METRIC_KEYS:
        row = f"{key:<11}{result.metrics[key]:>10.4f}"
        if reference:
            row += f"{reference[key]:>11.4f}{result.metrics[key] - reference[key]:>+9.4f}"
        lines.append(row)
    lines += [
        "",
        f"search latency (client): p50 {result.latency_p50_ms:.1f} ms, "
        f"p99 {result.latency_p99_ms:.1f} ms (server p50 {result.server_p50_ms:.1f} ms)",
    ]
    if reference:
        worst = max(abs(result.metrics[k] - reference[k]) for k in METRIC_KEYS)
        verdict = "within" if worst <= REFERENCE_TOLERANCE else "NOT within"
        lines.append(
            f"largest difference from the published figures: {worst:.4f} "
            f"({verdict} {REFERENCE_TOLERANCE})"
        )
    return "\n".join(lines)


def _row_key(row: Mapping[str, Any]) -> str:
    s = row["settings"]
    return "|".join(
        str(v)
        for v in (
            row["dataset"],
            s["model"],
            s["dtype"],
            s["max_chunk_tokens"],
            s["chunk_overlap_tokens"],
        )
    )


def _stored_rows(path: Path) -> list[dict[str, Any]]:
    """Read the runs an earlier ``--write-docs`` kept in the section's data comment."""
    if not path.exists():
        return []
    section = re.search(
        rf"<!-- BEGIN {DOCS_SECTION} -->.*?<!-- END {DOCS_SECTION} -->", path.read_text(), re.S
    )
    data = section and re.search(r"<!-- data: (.*?) -->", section.group(0), re.S)
    if not data:
        return []
    try:
        rows = json.loads(data.group(1))
    except json.JSONDecodeError:
        return []
    return [r for r in rows if isinstance(r, dict) and "settings" in r and "metrics" in r]


def docs_markdown(rows: Sequence[Mapping[str, Any]], machine: str) -> str:
    """Render every kept run as one table, with the published figures and the differences."""
    header = "| dataset | model | dtype | chunk tokens (max/overlap) | " + " | ".join(METRIC_KEYS)
    lines = [
        "## Retriever quality (`python -m retriever_service.evaluate DIR --write-docs`)",
        "",
        "Each BEIR corpus is ingested through `POST /v1/documents` of a real gunicorn retriever, "
        f"every judged query goes through `POST /v1/search` (top_k={SEARCH_TOP_K} chunks, a "
        "document ranked by its best chunk). Figures in brackets: difference from the published "
        f"figures ({REFERENCE_SOURCE}); the bar is {REFERENCE_TOLERANCE}. Latency is measured "
        "by the client, one query at a time.",
        "",
        header + " | search p50 / p99 ms | queries | docs → chunks |",
        "|" + "---|" * (len(METRIC_KEYS) + 7),
    ]
    references: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        s = row["settings"]
        reference = REFERENCE_FIGURES.get((row["dataset"], str(s["model"])))
        cells = []
        for key in METRIC_KEYS:
            value = row["metrics"][key]
            cells.append(
                f"{value:.4f} ({value - reference[key]:+.4f})" if reference else f"{value:.4f}"
            )
        if reference:
            references[(row["dataset"], str(s["model"]))] = reference
        lines.append(
            f"| {row['dataset']} | {s['model']} | {s['dtype']} | "
            f"{s['max_chunk_tokens']}/{s['chunk_overlap_tokens']} | "
            + " | ".join(cells)
            + f" | {row['latency_p50_ms']:.1f} / {row['latency_p99_ms']:.1f} | "
            f"{row['queries']} | {row['documents']} → {row['chunks']} |"
        )
    for (dataset, model), reference in references.items():
        lines.append(
            f"| {dataset} | {model} | published | — | "
            + " | ".join(f"{reference[k]:.4f}" for k in METRIC_KEYS)
            + " | — | — | — |"
        )
    lines += ["", *_dtype_verdicts(rows), "", machine]
    lines.append(f"<!-- data: {json.dumps(list(rows), sort_keys=True)} -->")
    return "\n".join(lines)


def _dtype_verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Compare bf16 with fp32 nDCG@10 where both were measured with the same settings."""
    verdicts = []
    by_key = {_row_key(r): r for r in rows}
    for row in rows:
        if row["settings"]["dtype"] != "bfloat16":
            continue
        twin = by_key.get(_row_key(row).replace("|bfloat16|", "|float32|"))
        if twin is None:
            continue
        gap = row["metrics"]["ndcg@10"] - twin["metrics"]["ndcg@10"]
        same = abs(gap) <= DTYPE_TOLERANCE
        verdicts.append(
            f"{row['dataset']}: bf16 nDCG@10 {row['metrics']['ndcg@10']:.4f} vs fp32 "
            f"{twin['metrics']['ndcg@10']:.4f}, difference {gap:+.4f}: "
            + (
                f"within {DTYPE_TOLERANCE}, so bf16 keeps fp32's retrieval quality here."
                if same
                else f"NOT within {DTYPE_TOLERANCE}."
            )
        )
    return verdicts


def write_docs(result: EvalResult) -> None:
    """Add (or replace) this run's row in docs/benchmarks.md, keeping the other runs' rows."""
    from bench.report import BENCHMARKS_MD, machine_line, write_section

    row = {
        "dataset": result.dataset,
        "settings": {k: result.settings[k] for k in ("model", "dtype") if k in result.settings}
        | {
            "max_chunk_tokens": result.settings.get("max_chunk_tokens"),
            "chunk_overlap_tokens": result.settings.get("chunk_overlap_tokens"),
        },
        "metrics": {k: round(v, 4) for k, v in result.metrics.items()},
        "latency_p50_ms": round(result.latency_p50_ms, 1),
        "latency_p99_ms": round(result.latency_p99_ms, 1),
        "queries": result.queries,
        "documents": result.documents,
        "chunks": result.chunks,
    }
    rows = [r for r in _stored_rows(BENCHMARKS_MD) if _row_key(r) != _row_key(row)]
    rows.append(row)
    # fp32 first: it is the baseline the bf16 row is read against.
    rows.sort(
        key=lambda r: (
            r["dataset"],
            str(r["settings"]["model"]),
            r["settings"]["dtype"] != "float32",
            str(r["settings"]["dtype"]),
        )
    )
    write_section(DOCS_SECTION, docs_markdown(rows, machine_line()))


# -- command line -----------------------------------------------------------------------------


def _spawned_retriever(workdir: Path) -> Any:
    from qa_common.process import ServiceProcess

    # The rest of this process's environment (EMBEDDING_DTYPE, CHUNK_MAX_TOKENS...) passes through.
    return ServiceProcess(
        "retriever_service",
        env={"CHROMA_PATH": str(workdir / "chroma"), "LOG_LEVEL": "WARNING"},
        log_path=workdir / "retriever.log",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retriever_service.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "dataset", type=Path, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/"
    )
    parser.add_argument(
        "--url", help="a running retriever to evaluate (default: start a temporary one)"
    )
    parser.add_argument("--collection", help="collection to use (default: eval-<folder name>)")
    parser.add_argument(
        "--keep", action="store_true", help="with --url, keep the collection afterwards"
    )
    parser.add_argument("--split", default="test", help="qrels/<split>.tsv to use (default: test)")
    parser.add_argument(
        "--top-k",
        type=int,
        default=SEARCH_TOP_K,
        help=f"chunks asked for per query (default {SEARCH_TOP_K}, the API's maximum)",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="record the figures in docs/benchmarks.md"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not 10 <= args.top_k <= 50:
        parser.error("--top-k must be between 10 (nDCG@10 needs 10 documents) and 50")

    try:
        dataset = load_dataset(args.dataset, args.split)
    except DatasetError as exc:
        print(f"error: malformed dataset: {exc}", file=sys.stderr)
        return 2
    for note in dataset.notes:
        print(f"note: {note}", file=sys.stderr)
    collection = args.collection or default_collection(dataset.name)

    from retriever_service.client import RetrieverClient

    progress = not args.quiet
    try:
        if args.url:
            client = RetrieverClient(args.url)
            try:
                result = evaluate(client, dataset, collection, top_k=args.top_k, progress=progress)
            finally:
                if not args.keep:
                    try:
                        client.delete_collection(collection)
                    except ServiceError as exc:
                        print(f"warning: could not delete {collection}: {exc}", file=sys.stderr)
        else:
            with tempfile.TemporaryDirectory(prefix="retriever-eval-") as workdir:
                service = _spawned_retriever(Path(workdir))
                print("starting a temporary retriever...", file=sys.stderr)
                with service:
                    service.wait_ready(timeout_s=300)
                    client = RetrieverClient(service.url)
                    result = evaluate(
                        client, dataset, collection, top_k=args.top_k, progress=progress
                    )
    except (ServiceError, RuntimeError, TimeoutError) as exc:
        message = getattr(exc, "message", None) or str(exc)
        print(f"error: evaluation stopped: {message}", file=sys.stderr)
        return 1
    print(render(result))
    if args.write_docs:
        write_docs(result)
        print("wrote the figures to docs/benchmarks.md (section retriever-eval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
