"""Ingest files into the knowledge base: ``python -m retriever_service.ingest PATH...``.

Reads text, Markdown, PDF, Word (.docx), HTML, CSV, JSON and JSONL files (folders recursively)
and sends them in batches to a running retriever (``--url``) or straight into the store
(``--in-process``). Running it twice changes nothing: ids are stable and unchanged documents are
skipped without embedding. ``--sync`` also deletes what a folder no longer holds; ``--watch``
keeps doing so as files change, until stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from qa_common.errors import Conflict, DownstreamError, NotFound, ServiceError, ValidationFailed
from retriever_service.folder_sync import (
    SOURCE_ROOT,
    FolderWatcher,
    folder_key,
    stale_documents,
)
from retriever_service.loaders import (
    LoadedDocument,
    LoadProblem,
    Parser,
    SourceFile,
    discover,
    load,
)
from retriever_service.parsing.formats import SUPPORTED_SUFFIXES

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
    deleted: int = 0
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
            f"  deleted:         {self.deleted}",
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


def collect(
    paths: Sequence[str], summary: IngestSummary, parser: Parser | None = None
) -> list[LoadedDocument]:
    """Read every document under the paths, reporting unreadable records and repeated ids."""
    sources, skipped = discover(paths)
    summary.files = len(sources)
    summary.skipped_files = len(skipped)
    return read_sources(sources, summary, parser, folders={Path(p) for p in paths})


def read_sources(
    sources: Sequence[SourceFile],
    summary: IngestSummary,
    parser: Parser | None,
    *,
    folders: set[Path],
) -> list[LoadedDocument]:
    """Load these files; a folder's documents carry its identity, for ``--sync``."""
    documents: list[LoadedDocument] = []
    seen: dict[str, str] = {}
    for source in sources:
        for item in load(source, parser):
            if isinstance(item, LoadProblem):
                summary.problems.append(item)
            elif item.id in seen:
                summary.problems.append(
                    LoadProblem(source.relative, f"id {item.id!r} already used in {seen[item.id]}")
                )
            else:
                seen[item.id] = source.relative
                if source.root in folders and source.root.is_dir():
                    item.metadata[SOURCE_ROOT] = folder_key(source.root)
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
            except (DownstreamError, ValidationFailed, Conflict):
                # One bad document rejects its whole batch: find it, keep the rest. (After a
                # write conflict, the documents that were stored come back "unchanged".)
                for doc in batch:
                    try:
                        _record(summary, send([doc.as_payload()]))
                    except (DownstreamError, ValidationFailed, Conflict) as exc:
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


class IngestTarget:
    """Where documents go: a running retriever, or the store itself."""

    def send(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def documents(self) -> Iterator[dict[str, Any]]:
        """Yield every document of the collection (id, source, metadata), a page at a time."""
        offset: int | None = 0
        while offset is not None:
            page = self.list_page(offset)
            yield from page["documents"]
            offset = page["next_offset"]

    def list_page(self, offset: int) -> dict[str, Any]:
        """Return one page of ``GET /v1/documents`` from ``offset``."""
        raise NotImplementedError

    def delete(self, document_id: str) -> None:
        raise NotImplementedError


class HttpTarget(IngestTarget):
    def __init__(self, url: str, collection: str | None) -> None:
        from qa_common.retriever_client import RetrieverClient

        self.client = RetrieverClient(url)
        self.collection = collection

    def send(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return self.client.ingest(batch, self.collection)

    def list_page(self, offset: int) -> dict[str, Any]:
        return self.client.list_documents(self.collection, limit=500, offset=offset)

    def delete(self, document_id: str) -> None:
        self.client.delete_document(document_id, self.collection)


class InProcessTarget(IngestTarget):
    def __init__(self, collection: str | None) -> None:
        from retriever_service.app import build_knowledge_base
        from retriever_service.config import load_config

        self.kb = build_knowledge_base(load_config())
        self.collection = collection

    def send(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        from qa_common.web import validate
        from retriever_service.knowledge_base import DocumentInput
        from retriever_service.parsing.model import Segment
        from retriever_service.schemas import IngestRequest

        request = validate(IngestRequest, {"documents": batch, "collection": self.collection})
        outcomes = self.kb.ingest(
            [
                DocumentInput(
                    d.text,
                    d.id,
                    dict(d.metadata),
                    tuple(Segment(s.start, s.end, s.page, s.section) for s in d.segments or []),
                )
                for d in request.documents
            ],
            request.collection,
        )
        return {"results": [{"id": o.id, "status": o.status, "chunks": o.chunks} for o in outcomes]}

    def list_page(self, offset: int) -> dict[str, Any]:
        return self.kb.list_documents(self.collection, limit=500, offset=offset)

    def delete(self, document_id: str) -> None:
        self.kb.delete_document(document_id, self.collection)


def sync_folder(
    target: IngestTarget,
    folder: Path,
    documents: Sequence[LoadedDocument],
    summary: IngestSummary,
    *,
    scope: set[str] | None = None,
) -> None:
    """Delete the stored documents of ``folder`` that its files (read now) no longer hold."""
    current: dict[str, set[str]] = {}
    for doc in documents:
        if doc.metadata.get(SOURCE_ROOT) == folder_key(folder):
            current.setdefault(str(doc.metadata.get("source")), set()).add(doc.id)
    if scope is not None:
        # A changed file that now holds nothing readable still counts as read.
        for relative in scope:
            if (folder / relative).is_file() and relative not in current:
                current[relative] = set()
    # A file that could not be read (or only partly) keeps what was stored of it.
    unreadable = {p.file or p.source for p in summary.problems}
    for document_id in stale_documents(
        target.documents(), folder_key(folder), current, unreadable=unreadable, scope=scope
    ):
        try:
            target.delete(document_id)
        except (NotFound, DownstreamError) as exc:
            if exc.status != 404:
                raise
            continue  # deleted meanwhile (another sync): what was asked holds
        summary.deleted += 1


def watch_folders(
    folders: Sequence[Path],
    target: IngestTarget,
    parser: Parser,
    *,
    batch_size: int,
    debounce_s: float,
    stop: threading.Event,
) -> None:
    """Ingest and delete as files under the folders change, until ``stop`` is set."""

    def on_changes(folder: Path, paths: set[str]) -> None:
        summary = IngestSummary()
        present = [
            SourceFile(folder / p, folder)
            for p in sorted(paths)
            if (folder / p).is_file() and (folder / p).suffix.lower() in SUPPORTED_SUFFIXES
        ]
        documents = read_sources(present, summary, parser, folders={folder})
        run_ingest(documents, target.send, summary, batch_size=batch_size, progress=False)
        sync_folder(target, folder, documents, summary, scope=paths)
        print(
            f"{time.strftime('%H:%M:%S')} {folder}: {len(paths)} changed path(s): "
            f"{summary.statuses['created']} created, {summary.statuses['updated']} updated, "
            f"{summary.deleted} deleted, {summary.failed} failed",
            flush=True,
        )
        for problem in summary.problems:
            print(f"  ! {problem.source}: {problem.message}", flush=True)

    watcher = FolderWatcher(folders, on_changes, suffixes=SUPPORTED_SUFFIXES, debounce_s=debounce_s)
    print(f"watching {', '.join(str(f) for f in folders)} (Ctrl-C to stop)", flush=True)
    watcher.run(stop)


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
    parser.add_argument(
        "--sync",
        action="store_true",
        help="also delete the documents that came from these folders and are no longer in them",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="after syncing, keep watching the folders and apply adds, changes and deletes "
        "until stopped (Ctrl-C)",
    )
    parser.add_argument(
        "--debounce",
        type=float,
        default=2.0,
        help="seconds without file events before a batch of changes is applied (--watch)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    folders = [Path(p) for p in args.paths if Path(p).is_dir()]
    if (args.sync or args.watch) and len(folders) != len(args.paths):
        print("error: --sync and --watch take folders only", file=sys.stderr)
        return 2

    from retriever_service.config import load_config
    from retriever_service.parsing.sandbox import FileParser

    config = load_config()
    file_parser = FileParser(config.parse_limits, workers=config.parse_workers)
    summary = IngestSummary()
    try:
        documents = collect(args.paths, summary, file_parser)
        sink: IngestTarget = (
            InProcessTarget(args.collection)
            if args.in_process
            else HttpTarget(args.url, args.collection)
        )
        run_ingest(
            documents, sink.send, summary, batch_size=args.batch_size, progress=not args.quiet
        )
        if args.sync or args.watch:
            for folder in folders:
                sync_folder(sink, folder, documents, summary)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"error: ingestion stopped: {exc.message}", file=sys.stderr)
        print(summary.render(), file=sys.stderr)
        return 1
    print(summary.render(), flush=True)
    if args.watch:
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            watch_folders(
                folders,
                sink,
                file_parser,
                batch_size=args.batch_size,
                debounce_s=args.debounce,
                stop=stop,
            )
        except KeyboardInterrupt:
            pass
        finally:
            file_parser.close()
        return 0
    file_parser.close()
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
