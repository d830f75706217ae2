"""Ingest files into the knowledge base: ``python -m retriever_service.ingest PATH...``.

Reads .txt, .md, .jsonl, .json and .csv files (folders recursively) and sends them in batches
to a running retriever (``--url``) or straight into the store (``--in-process``). Running it
twice changes nothing: ids are stable and unchanged documents are skipped without embedding.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from qa_common.errors import DownstreamError, ServiceError, ValidationFailed
from retriever_service.loaders import LoadedDocument, LoadProblem, discover, load

log = logging.getLogger("retriever_service.ingest")

IngestBatch = Callable[[list[dict[str, Any]]], dict[str, Any]]
# Stay well below the retriever's default 16 MiB body limit.
MAX_BATCH_CHARS = 4_000_000


@dataclass
class IngestSummary:
    files: int = 0
    skipped_files: int = 0
    documents: int = 0
    chunks: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    problems: list[LoadProblem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return len(self.problems)

    def render(self) -> str:
        lines = [
            f"files read:        {self.files} ({self.skipped_files} skipped: unsupported type)",
            f"documents:         {self.documents}",
            f"  created:         {self.statuses['created']}",
            f"  updated:         {self.statuses['updated']}",
            f"  unchanged:       {self.statuses['unchanged']}",
            f"  failed:          {self.failed}",
            f"chunks written:    {self.chunks}",
            f"time:              {self.seconds:.1f}s",
        ]
        lines += [f"  ! {p.source}: {p.message}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ! ... and {len(self.problems) - 50} more")
        return "\n".join(lines)


def _batches(documents: Sequence[LoadedDocument], size: int):
    batch: list[LoadedDocument] = []
    chars = 0
    for doc in documents:
        if batch and (len(batch) >= size or chars + len(doc.text) > MAX_BATCH_CHARS):
            yield batch
            batch, chars = [], 0
        batch.append(doc)
        chars += len(doc.text)
    if batch:
        yield batch


def collect(paths: Sequence[str], summary: IngestSummary) -> list[LoadedDocument]:
    """Read every document under the paths, reporting unreadable records and repeated ids."""
    sources, skipped = discover(paths)
    summary.files = len(sources)
    summary.skipped_files = len(skipped)
    documents: list[LoadedDocument] = []
    seen: dict[str, str] = {}
    for source in sources:
        for item in load(source):
            if isinstance(item, LoadProblem):
                summary.problems.append(item)
            elif item.id in seen:
                summary.problems.append(
                    LoadProblem(source.relative, f"id {item.id!r} already used in {seen[item.id]}")
                )
            else:
                seen[item.id] = source.relative
                documents.append(item)
    return documents


def run_ingest(
    documents: Sequence[LoadedDocument],
    send: IngestBatch,
    summary: IngestSummary,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> IngestSummary:
    """Send documents in batches; a rejected batch is retried one document at a time."""
    started = time.perf_counter()
    with tqdm(total=len(documents), unit="doc", disable=not progress, desc="ingesting") as bar:
        for batch in _batches(documents, batch_size):
            try:
                _record(summary, send([d.as_payload() for d in batch]))
            except (DownstreamError, ValidationFailed):
                # One bad document rejects its whole batch (it is atomic): find it, keep the rest.
                for doc in batch:
                    try:
                        _record(summary, send([doc.as_payload()]))
                    except (DownstreamError, ValidationFailed) as exc:
                        summary.problems.append(LoadProblem(doc.id, exc.message))
            bar.update(len(batch))
    summary.seconds = time.perf_counter() - started
    return summary


def _record(summary: IngestSummary, response: dict[str, Any]) -> None:
    for result in response.get("results", []):
        summary.documents += 1
        summary.statuses[result["status"]] += 1
        if result["status"] != "unchanged":
            summary.chunks += int(result["chunks"])


def _http_sender(url: str, collection: str | None) -> IngestBatch:
    from retriever_service.client import RetrieverClient

    client = RetrieverClient(url)
    return lambda batch: client.ingest(batch, collection)


def _in_process_sender(collection: str | None) -> IngestBatch:
    from retriever_service.app import build_knowledge_base
    from retriever_service.config import load_config
    from retriever_service.knowledge_base import DocumentInput
    from retriever_service.schemas import IngestRequest

    kb = build_knowledge_base(load_config())

    def send(batch: list[dict[str, Any]]) -> dict[str, Any]:
        from qa_common.web import validate

        request = validate(IngestRequest, {"documents": batch, "collection": collection})
        outcomes = kb.ingest(
            [DocumentInput(d.text, d.id, dict(d.metadata)) for d in request.documents],
            request.collection,
        )
        return {"results": [{"id": o.id, "status": o.status, "chunks": o.chunks} for o in outcomes]}

    return send


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retriever_service.ingest", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("paths", nargs="+", help="files or folders to ingest")
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--url",
        default=os.environ.get("RETRIEVER_URL", "http://127.0.0.1:8001"),
        help="retriever to send to (default: $RETRIEVER_URL or http://127.0.0.1:8001)",
    )
    target.add_argument(
        "--in-process",
        action="store_true",
        help="write straight into the store configured by the environment (CHROMA_PATH or "
        "CHROMA_HOST); never while a retriever serves the same embedded directory",
    )
    parser.add_argument("--collection", help="collection to write to (default: the service's)")
    parser.add_argument("--batch-size", type=int, default=64, help="documents per request")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    summary = IngestSummary()
    try:
        documents = collect(args.paths, summary)
        send = (
            _in_process_sender(args.collection)
            if args.in_process
            else _http_sender(args.url, args.collection)
        )
        run_ingest(documents, send, summary, batch_size=args.batch_size, progress=not args.quiet)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"error: ingestion stopped: {exc.message}", file=sys.stderr)
        print(summary.render(), file=sys.stderr)
        return 1
    print(summary.render())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
