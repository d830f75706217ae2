"""Read documents from files: text, Markdown, PDF, Word, HTML, and records in CSV, JSON, JSONL.

Document ids are stable across runs, so that re-ingesting a folder replaces rather than
duplicates: a file that is one document (text, Markdown, PDF, Word, HTML) is identified by its
path relative to the folder given (its name, for a file given alone or uploaded); a record by its
own ``id`` (or ``_id``) field, else by its file and a digest of its content, so that inserting a
row above it does not renumber it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from retriever_service.parsing.formats import (
    RECORD_TYPES,
    SUPPORTED_SUFFIXES,
    file_type,
    parse_document,
    unsupported,
)
from retriever_service.parsing.limits import ParseLimits
from retriever_service.parsing.model import FileRejected, ParsedDocument, Segment
from retriever_service.parsing.sandbox import describe
from retriever_service.parsing.text import decode_text

log = logging.getLogger(__name__)
_TEXT_FIELDS = ("text", "content", "body")
_ID_FIELDS = ("id", "_id", "doc_id", "document_id")


class Parser(Protocol):
    """Parses a single-document file's bytes (``FileParser`` sandboxes the risky types)."""

    def parse(self, kind: str, data: bytes) -> ParsedDocument: ...


class InProcessParser:
    """Parse in this process, with the given limits: for trusted files and tests."""

    def __init__(self, limits: ParseLimits | None = None) -> None:
        self.limits = limits or ParseLimits()

    def parse(self, kind: str, data: bytes) -> ParsedDocument:
        return parse_document(kind, data, self.limits)


@dataclass
class LoadedDocument:
    id: str
    text: str
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)
    segments: tuple[Segment, ...] = ()

    def as_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"id": self.id, "text": self.text, "metadata": self.metadata}
        if self.segments:
            payload["segments"] = [
                {
                    k: v
                    for k, v in (
                        ("start", s.start),
                        ("end", s.end),
                        ("page", s.page),
                        ("section", s.section),
                    )
                    if v is not None
                }
                for s in self.segments
            ]
        return payload


@dataclass
class LoadProblem:
    source: str
    message: str
    code: str = "unreadable"
    # The file it is about (a record's source also names its row).
    file: str | None = None


@dataclass
class SourceFile:
    path: Path
    root: Path

    @property
    def relative(self) -> str:
        return self.path.relative_to(self.root).as_posix()


def discover(paths: Iterable[str | Path]) -> tuple[list[SourceFile], list[Path]]:
    """Expand files and folders into readable source files; also return what was skipped."""
    found: list[SourceFile] = []
    skipped: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                if not candidate.is_file() or _hidden(candidate.relative_to(path)):
                    continue
                if candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                    found.append(SourceFile(candidate, path))
                else:
                    skipped.append(candidate)
        elif path.is_file():
            if path.suffix.lower() in SUPPORTED_SUFFIXES:
                found.append(SourceFile(path, path.parent))
            else:
                skipped.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found, skipped


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def load(
    source: SourceFile, parser: Parser | None = None
) -> Iterator[LoadedDocument | LoadProblem]:
    """Yield the documents in one file, and a problem for each record that cannot be read."""
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        yield LoadProblem(source.relative, f"cannot read file: {exc}")
        return
    yield from load_bytes(source.relative, data, parser or InProcessParser())


def load_bytes(name: str, data: bytes, parser: Parser) -> Iterator[LoadedDocument | LoadProblem]:
    """Yield the documents in one file's bytes; ``name`` is its id (or its records' prefix)."""
    kind = file_type(name)
    try:
        if kind is None:
            raise unsupported(name)
        if kind in RECORD_TYPES.values():
            text = decode_text(data)
            records = {"jsonl": _load_jsonl, "json": _load_json, "csv": _load_csv}[kind]
            for item in records(name, text):
                if isinstance(item, LoadProblem):
                    item.file = name
                yield item
            return
        parsed = parser.parse(kind, data)
    except FileRejected as exc:
        yield LoadProblem(name, exc.reason, exc.code, file=name)
        return
    except (ValueError, csv.Error, RecursionError) as exc:
        yield LoadProblem(name, f"cannot read file: {describe(exc)}", file=name)
        return
    except Exception as exc:  # a parser library failing on an odd file: that file's problem
        log.warning("reading %s failed", name, exc_info=True)
        yield LoadProblem(name, f"cannot read file: {describe(exc)}", file=name)
        return
    yield _document(name, kind, parsed)


def _document(name: str, kind: str, parsed: ParsedDocument) -> LoadedDocument:
    stem = Path(name).stem.replace("-", " ").replace("_", " ")
    metadata: dict[str, str | int | float | bool] = {
        "source": name,
        "title": parsed.title or stem,
        "type": kind,
    }
    if parsed.pages is not None:
        metadata["pages"] = parsed.pages
    return LoadedDocument(name, parsed.text, metadata, parsed.segments)


class _RecordIds:
    """Give records without an id one from their file and content, stable under insertions."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._seen: Counter[str] = Counter()

    def __call__(self, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        self._seen[digest] += 1
        # The same text twice in one file: the second copy is its own record.
        count = self._seen[digest]
        return f"{self.name}#{digest}" if count == 1 else f"{self.name}#{digest}-{count}"


def _scalar_metadata(raw: dict[str, Any]) -> dict[str, str | int | float | bool]:
    metadata: dict[str, str | int | float | bool] = {}
    for key, value in raw.items():
        key = str(key).strip()
        if not key or key.startswith("_") or value is None or value == "":
            continue
        if isinstance(value, bool | int | float | str):
            metadata[key] = value
        else:
            metadata[key] = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return metadata


def _record(raw: Any, name: str, locator: str, ids: _RecordIds) -> LoadedDocument | LoadProblem:
    """Turn one JSON record into a document: text (with BEIR's title in front), id, metadata."""
    where = f"{name}{locator}"
    if isinstance(raw, str):
        raw = {"text": raw}
    if not isinstance(raw, dict):
        return LoadProblem(where, "record is not an object")
    text = next((raw[f] for f in _TEXT_FIELDS if isinstance(raw.get(f), str)), None)
    if text is None or not text.strip():
        return LoadProblem(where, f"record has no text (one of {', '.join(_TEXT_FIELDS)})")
    title = raw.get("title")
    if isinstance(title, str) and title.strip():
        text = f"{title.strip()}\n\n{text}"
    doc_id = next((str(raw[f]) for f in _ID_FIELDS if raw.get(f) not in (None, "")), None)
    nested = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    extra = {k: v for k, v in raw.items() if k not in (*_TEXT_FIELDS, *_ID_FIELDS, "metadata")}
    # "source" is the file the record came from, whatever the record says (sync reads it).
    metadata = {**_scalar_metadata(extra), **_scalar_metadata(nested), "source": name}
    # A file holding one object is that document; records of a list are named by content.
    return LoadedDocument(doc_id or (ids(text) if locator else name), text, metadata)


def _load_jsonl(name: str, text: str) -> Iterator[LoadedDocument | LoadProblem]:
    ids = _RecordIds(name)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            yield LoadProblem(f"{name}#L{number}", f"invalid JSON: {exc.msg}")
            continue
        yield _record(raw, name, f"#L{number}", ids)


def _load_json(name: str, text: str) -> Iterator[LoadedDocument | LoadProblem]:
    raw = json.loads(text)
    ids = _RecordIds(name)
    if isinstance(raw, dict) and isinstance(raw.get("documents"), list):
        raw = raw["documents"]
    if isinstance(raw, dict):
        yield _record(raw, name, "", ids)
        return
    if not isinstance(raw, list):
        yield LoadProblem(name, 'expected a list of documents or {"documents": [...]}')
        return
    for index, item in enumerate(raw):
        yield _record(item, name, f"#{index}", ids)


def _load_csv(name: str, text: str) -> Iterator[LoadedDocument | LoadProblem]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = {c.strip().lower(): c for c in reader.fieldnames or []}
    qa = "question" in columns and "answer" in columns
    if not qa and not any(f in columns for f in _TEXT_FIELDS):
        yield LoadProblem(name, "CSV needs question and answer columns, or a text column")
        return
    ids = _RecordIds(name)
    for number, row in enumerate(reader, start=2):
        values = {key: (row.get(original) or "").strip() for key, original in columns.items()}
        where = f"{name}#row{number}"
        if qa:
            question, answer = values.pop("question"), values.pop("answer")
            if not question or not answer:
                yield LoadProblem(where, "question or answer is empty")
                continue
            # The question is embedded with its answer: users ask in words close to it.
            text_value = f"{question}\n{answer}"
            values["question"] = question
        else:
            field_name = next(f for f in _TEXT_FIELDS if f in columns)
            text_value = values.pop(field_name)
            if not text_value:
                yield LoadProblem(where, "text is empty")
                continue
        doc_id = next((values.pop(f) for f in _ID_FIELDS if values.get(f)), None)
        for f in _ID_FIELDS:
            values.pop(f, None)
        metadata = {**_scalar_metadata(values), "source": name}
        yield LoadedDocument(doc_id or ids(text_value), text_value, metadata)
