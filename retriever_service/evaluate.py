"""Measure retrieval quality on a BEIR dataset: ``python -m retriever_service.evaluate DIR``.

Ingests the dataset's corpus once through the retriever's HTTP API into a collection of its own,
runs every judged query through ``/v1/search`` in each search mode (dense, lexical, hybrid),
maps chunks back to documents (a document ranks at its first chunk in the service's order) and
prints nDCG@10, Recall@1/5/10, MRR@10 and client-measured latency, one row per mode. Without
``--url`` it starts a temporary retriever under gunicorn on an empty store, with this process's
environment (so ``EMBEDDING_DTYPE=float32 python -m retriever_service.evaluate DIR`` measures
fp32), and stops it afterwards. It never writes into or deletes a collection it did not create,
unless ``--reuse`` says so. ``python -m bench.retrieval_quality`` records the figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qa_common.errors import ServiceError
from qa_common.retriever_client import RetrieverClient
from retriever_service.evaluation.dataset import (
    QUERY_SPLITS,
    SPLIT_SEED,
    DatasetError,
    default_collection,
    load_dataset,
)
from retriever_service.evaluation.report import render, render_sweep
from retriever_service.evaluation.runner import (
    FUSIONS,
    MODES,
    SEARCH_TOP_K,
    CollectionExists,
    EvalResult,
    SearchSetting,
    evaluate,
    evaluation_collection,
    mode_settings,
    sweep_settings,
)

# Body fields of POST /v1/search that only a retriever with hybrid search accepts.
MODE_FIELDS = ("mode", "fusion", "dense_weight")


def _modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(MODES)}; got {text!r}"
        )
    return list(dict.fromkeys(modes))


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of one evaluation run (all but the dataset and the JSON output)."""
    parser.add_argument(
        "--url", help="a running retriever to evaluate (default: start a temporary one)"
    )
    parser.add_argument("--collection", help="collection to use (default: eval-<folder name>)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="with --url, evaluate into the collection even if it already exists (it is kept)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="with --url, keep the collection this run created instead of deleting it",
    )
    parser.add_argument(
        "--split", default="test", help="qrels/<split>.tsv to judge by (default: test)"
    )
    parser.add_argument(
        "--queries",
        choices=QUERY_SPLITS,
        default="all",
        help="judged queries to search: all, or the dev or test half of a fixed seeded split "
        f"(seed {SPLIT_SEED!r}); choose weights on dev, report on test (default: all)",
    )
    parser.add_argument(
        "--modes",
        type=_modes,
        default=list(MODES),
        help=f"comma-separated search modes, one row each (default: {','.join(MODES)})",
    )
    parser.add_argument(
        "--fusion", choices=FUSIONS, help="hybrid fusion to ask for (default: the server's)"
    )
    parser.add_argument(
        "--dense-weight",
        type=_weight,
        help="hybrid dense weight in [0, 1] to ask for (default: the server's)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also run hybrid with each fusion at dense_weight 0.1..0.9 and print nDCG@10 "
        "per setting",
    )
    parser.add_argument(
        "--top-k",
        type=int,
        default=SEARCH_TOP_K,
        help=f"chunks asked for per query (default {SEARCH_TOP_K}, the API's maximum)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option combinations argparse cannot express (exits through ``parser.error``)."""
    if not 10 <= args.top_k <= 50:
        parser.error("--top-k must be between 10 (nDCG@10 needs 10 documents) and 50")
    if (args.reuse or args.keep) and not args.url:
        parser.error("--reuse and --keep need --url (a temporary retriever is thrown away)")


def search_settings(args: argparse.Namespace) -> list[SearchSetting]:
    """Return the search settings the options ask for, one table row each."""
    return mode_settings(args.modes, fusion=args.fusion, dense_weight=args.dense_weight)


def _spawned_retriever(workdir: Path) -> Any:
    from qa_common.process import ServiceProcess

    # The rest of this process's environment (EMBEDDING_DTYPE, CHUNK_MAX_TOKENS...) passes through.
    return ServiceProcess(
        "retriever_service",
        env={"CHROMA_PATH": str(workdir / "chroma"), "LOG_LEVEL": "WARNING"},
        log_path=workdir / "retriever.log",
    )


def _error_message(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    details = str(getattr(exc, "details", "") or "")
    if getattr(exc, "status", None) == 422 and any(f"'{f}'" in details for f in MODE_FIELDS):
        message += (
            f" {details}: this retriever's POST /v1/search does not take the search mode "
            f"fields ({', '.join(MODE_FIELDS)}); it predates hybrid search"
        )
    return message


def run(args: argparse.Namespace, folder: Path) -> tuple[int, EvalResult | None]:
    """Evaluate one dataset folder and print its figures; return the exit status and result."""
    try:
        dataset = load_dataset(folder, args.split)
    except DatasetError as exc:
        print(f"error: malformed dataset: {exc}", file=sys.stderr)
        return 2, None
    for note in dataset.notes:
        print(f"note: {note}", file=sys.stderr)
    collection = args.collection or default_collection(dataset.name)
    options: dict[str, Any] = {
        "settings": search_settings(args),
        "sweep": sweep_settings() if args.sweep else [],
        "query_split": args.queries,
        "top_k": args.top_k,
        "progress": not args.quiet,
    }
    try:
        if args.url:
            client = RetrieverClient(args.url)
            with evaluation_collection(client, collection, reuse=args.reuse, keep=args.keep):
                result = evaluate(client, dataset, collection, **options)
        else:
            with tempfile.TemporaryDirectory(prefix="retriever-eval-") as workdir:
                service = _spawned_retriever(Path(workdir))
                print("starting a temporary retriever...", file=sys.stderr)
                with service:
                    service.wait_ready(timeout_s=300)
                    client = RetrieverClient(service.url)
                    result = evaluate(client, dataset, collection, **options)
    except CollectionExists as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2, None
    except (ServiceError, RuntimeError, TimeoutError) as exc:
        print(f"error: evaluation stopped: {_error_message(exc)}", file=sys.stderr)
        return 1, None
    print(render(result))
    if result.sweep:
        print()
        print(render_sweep(result))
    return 0, result


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m retriever_service.evaluate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "dataset", type=Path, help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/"
    )
    add_run_options(parser)
    parser.add_argument("--json-out", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    check_options(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    status, result = run(args, args.dataset)
    if result is not None and args.json_out:
        args.json_out.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"wrote the figures to {args.json_out}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
