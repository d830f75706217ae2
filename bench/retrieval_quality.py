"""Record retrieval quality in docs/benchmarks.md: ``python -m bench.retrieval_quality DIR...``.

Runs ``retriever_service.evaluate`` on each BEIR folder (same options: ``--url``, ``--queries``,
``--modes``, ``--fusion``, ``--dense-weight``...), prints its figures, and adds one row per
dataset, model, dtype, chunking, query split and search mode to the section ``retriever-eval``,
keeping the rows of earlier runs with other settings (fp32 and bf16 runs accumulate, and the
bf16-vs-fp32 verdict is read from them). ``--from-json FILE`` records a result that
``python -m retriever_service.evaluate DIR --json-out FILE`` wrote elsewhere (in the Docker
image, say, which has no bench/), without running anything.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.report import BENCHMARKS_MD, machine_line, write_section
from retriever_service.evaluate import add_run_options, check_options, run
from retriever_service.evaluation.dataset import SPLIT_SEED
from retriever_service.evaluation.metrics import METRIC_KEYS
from retriever_service.evaluation.report import (
    REFERENCE_MODE,
    REFERENCE_SOURCE,
    REFERENCE_TOLERANCE,
    reference_for,
)
from retriever_service.evaluation.runner import MODES, SEARCH_TOP_K, EvalResult

DOCS_SECTION = "retriever-eval"
# Largest bf16-vs-fp32 nDCG@10 gap at which bf16 counts as "the same retrieval quality".
DTYPE_TOLERANCE = 0.001
_SPLIT_ORDER = ("all", "dev", "test")
_KEY_SETTINGS = ("model", "dtype", "max_chunk_tokens", "chunk_overlap_tokens")


def rows_from_result(result: EvalResult) -> list[dict[str, Any]]:
    """Turn one run into table rows, one per search setting (the sweep is not recorded)."""
    return [
        {
            "dataset": result.dataset,
            "settings": {key: result.settings.get(key) for key in _KEY_SETTINGS},
            "mode": run.label,
            "query_split": result.query_split,
            "metrics": {k: round(v, 4) for k, v in run.metrics.items()},
            "latency_p50_ms": round(run.latency_p50_ms, 1),
            "latency_p99_ms": round(run.latency_p99_ms, 1),
            "queries": result.queries,
            "documents": result.documents,
            "chunks": result.chunks,
        }
        for run in result.runs
    ]


def _normalized(row: dict[str, Any]) -> dict[str, Any]:
    # Rows written before search modes existed measured dense search on every judged query.
    return {"mode": "dense", "query_split": "all", **row}


def row_key(row: Mapping[str, Any], *, with_dtype: bool = True) -> tuple[str, ...]:
    """Return what makes a row distinct: a later run with the same key replaces it."""
    s = row["settings"]
    return tuple(
        str(v)
        for v in (
            row["dataset"],
            s["model"],
            s["dtype"] if with_dtype else "",
            s["max_chunk_tokens"],
            s["chunk_overlap_tokens"],
            row["query_split"],
            row["mode"],
        )
    )


def _sort_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    s = row["settings"]
    base_mode = str(row["mode"]).split(" ")[0]
    return (
        row["dataset"],
        str(s["model"]),
        _SPLIT_ORDER.index(row["query_split"]) if row["query_split"] in _SPLIT_ORDER else 9,
        # fp32 first: it is the baseline the bf16 rows are read against.
        s["dtype"] != "float32",
        str(s["dtype"]),
        MODES.index(base_mode) if base_mode in MODES else len(MODES),
        str(row["mode"]),
    )


def stored_rows(path: Path) -> list[dict[str, Any]]:
    """Read the rows an earlier run kept in the section's data comment."""
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
    return [
        _normalized(r) for r in rows if isinstance(r, dict) and "settings" in r and "metrics" in r
    ]


def merge_rows(
    old: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Replace old rows by new ones with the same key, keep the rest, and sort them."""
    fresh = {row_key(r) for r in new}
    return sorted([*(r for r in old if row_key(r) not in fresh), *new], key=_sort_key)


def _compared(row: Mapping[str, Any]) -> dict[str, float] | None:
    # Published figures are dense retrieval over every query; other rows are not comparable.
    if row["mode"] != REFERENCE_MODE or row["query_split"] != "all":
        return None
    return reference_for(row["dataset"], row["settings"]["model"])


def docs_markdown(rows: Sequence[Mapping[str, Any]], machine: str) -> str:
    """Render every kept row as one table, with the published figures and the differences."""
    header = (
        "| dataset | model | dtype | chunk tokens (max/overlap) | mode | queries | "
        + " | ".join(METRIC_KEYS)
    )
    lines = [
        "## Retriever quality (`python -m bench.retrieval_quality DIR [DIR...]`)",
        "",
        "Each BEIR corpus is ingested once through `POST /v1/documents` of a real gunicorn "
        f"retriever, then every judged query goes through `POST /v1/search` (top_k={SEARCH_TOP_K} "
        "chunks) in each search mode, the modes taking turns on each query; a document ranks at "
        "its first chunk in the order the service returns. Hybrid rows name the fusion and "
        "dense weight used (`default`: the server's, none asked for). Queries: all judged ones, "
        "or the dev or test half of a split by the parity of sha256(seed, query id), seed "
        f"`{SPLIT_SEED}`; weights are chosen on dev and reported on test. Figures in brackets: "
        f"difference from the published dense figures ({REFERENCE_SOURCE}); the bar is "
        f"{REFERENCE_TOLERANCE}. Latency is measured by the client, one query at a time.",
        "",
        header + " | search p50 / p99 ms | docs → chunks |",
        "|" + "---|" * (len(METRIC_KEYS) + 8),
    ]
    references: dict[tuple[str, str], dict[str, float]] = {}
    for row in rows:
        s = row["settings"]
        reference = _compared(row)
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
            f"{s['max_chunk_tokens']}/{s['chunk_overlap_tokens']} | {row['mode']} | "
            f"{row['query_split']} ({row['queries']}) | "
            + " | ".join(cells)
            + f" | {row['latency_p50_ms']:.1f} / {row['latency_p99_ms']:.1f} | "
            f"{row['documents']} → {row['chunks']} |"
        )
    for (dataset, model), reference in references.items():
        lines.append(
            f"| {dataset} | {model} | published | — | {REFERENCE_MODE} | all | "
            + " | ".join(f"{reference[k]:.4f}" for k in METRIC_KEYS)
            + " | — | — |"
        )
    lines += ["", *dtype_verdicts(rows), "", machine]
    lines.append(f"<!-- data: {json.dumps(list(rows), sort_keys=True)} -->")
    return "\n".join(lines)


def dtype_verdicts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Compare bf16 with fp32 nDCG@10 where both were measured with the same other settings."""
    verdicts = []
    fp32 = {row_key(r, with_dtype=False): r for r in rows if r["settings"]["dtype"] == "float32"}
    for row in rows:
        if row["settings"]["dtype"] != "bfloat16":
            continue
        twin = fp32.get(row_key(row, with_dtype=False))
        if twin is None:
            continue
        gap = row["metrics"]["ndcg@10"] - twin["metrics"]["ndcg@10"]
        same = abs(gap) <= DTYPE_TOLERANCE
        verdicts.append(
            f"{row['dataset']}, {row['mode']}, {row['query_split']} queries: bf16 nDCG@10 "
            f"{row['metrics']['ndcg@10']:.4f} vs fp32 {twin['metrics']['ndcg@10']:.4f}, "
            f"difference {gap:+.4f}: "
            + (
                f"within {DTYPE_TOLERANCE}, so bf16 keeps fp32's retrieval quality here."
                if same
                else f"NOT within {DTYPE_TOLERANCE}."
            )
        )
    return verdicts


def write_docs(results: Sequence[EvalResult], path: Path = BENCHMARKS_MD) -> None:
    """Add (or replace) these runs' rows in the docs section, keeping the other rows."""
    new = [row for result in results for row in rows_from_result(result)]
    rows = merge_rows(stored_rows(path), new)
    write_section(DOCS_SECTION, docs_markdown(rows, machine_line()), path=path)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.retrieval_quality", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "datasets", type=Path, nargs="*", help="BEIR folders: corpus.jsonl, queries.jsonl, qrels/"
    )
    add_run_options(parser)
    parser.add_argument(
        "--from-json",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="record a result written by `retriever_service.evaluate --json-out` (repeatable)",
    )
    args = parser.parse_args(argv)
    check_options(parser, args)
    if not args.datasets and not args.from_json:
        parser.error("name at least one dataset folder or --from-json file")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results: list[EvalResult] = []
    try:
        for path in args.from_json:
            results.append(EvalResult.from_dict(json.loads(path.read_text(encoding="utf-8"))))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"error: cannot read a result file: {exc}", file=sys.stderr)
        return 2
    for folder in args.datasets:
        status, result = run(args, folder)
        if result is None:
            # Nothing is written unless every dataset ran: a partial table would look complete.
            return status
        results.append(result)
    write_docs(results, BENCHMARKS_MD)
    print(f"wrote the figures to {BENCHMARKS_MD} (section {DOCS_SECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
