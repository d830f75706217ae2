"""Read documents from files: .txt, .md, .jsonl, .json and .csv.

Document ids are stable across runs so that re-ingesting a folder replaces rather than
duplicates: a text file's id is its path relative to the folder given; a record's id is its own
``id`` (or ``_id``) field, else its file and line or row number.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".jsonl", ".json", ".csv"})
_TEXT_FIELDS = ("text", "content", "body")
_ID_FIELDS = ("id", "_id", "doc_id", "document_id")


@dataclass
class LoadedDocument:
    id: str
    text: str
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)

    def as_payload(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": self.metadata}


@dataclass
class LoadProblem:
    source: str
    message: str


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


def load(source: SourceFile) -> Iterator[LoadedDocument | LoadProblem]:
    """Yield the documents in one file, and a problem for each record that cannot be read."""
    suffix = source.path.suffix.lower()
    try:
        if suffix in (".txt", ".md"):
            yield from _load_text(source)
        elif suffix == ".jsonl":
            yield from _load_jsonl(source)
        elif suffix == ".json":
            yield from _load_json(source)
        elif suffix == ".csv":
            yield from _load_csv(source)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        yield LoadProblem(source.relative, f"cannot read file: {exc}")


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


def _load_text(source: SourceFile) -> Iterator[LoadedDocument | LoadProblem]:
    text = source.path.read_text(encoding="utf-8")
    if not text.strip():
        yield LoadProblem(source.relative, "file is empty")
        return
    metadata: dict[str, str | int | float | bool] = {"source": source.relative}
    title = _markdown_title(text) if source.path.suffix.lower() == ".md" else None
    metadata["title"] = title or source.path.stem.replace("-", " ").replace("_", " ")
    yield LoadedDocument(source.relative, text, metadata)


def _markdown_title(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip() or None
        if line.strip():
            return None
    return None


def _record(raw: Any, source: SourceFile, locator: str) -> LoadedDocument | LoadProblem:
    """Turn one JSON record into a document: text (with BEIR's title in front), id, metadata."""
    where = f"{source.relative}{locator}"
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
    metadata = {"source": source.relative, **_scalar_metadata(extra), **_scalar_metadata(nested)}
    return LoadedDocument(doc_id or where, text, metadata)


def _load_jsonl(source: SourceFile) -> Iterator[LoadedDocument | LoadProblem]:
    with source.path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                yield LoadProblem(f"{source.relative}#L{number}", f"invalid JSON: {exc.msg}")
                continue
            yield _record(raw, source, f"#L{number}")


def _load_json(source: SourceFile) -> Iterator[LoadedDocument | LoadProblem]:
    raw = json.loads(source.path.read_text(encoding="utf-8"))
    if isinstance(raw, dict) and isinstance(raw.get("documents"), list):
        raw = raw["documents"]
    if isinstance(raw, dict):
        yield _record(raw, source, "")
        return
    if not isinstance(raw, list):
        yield LoadProblem(source.relative, 'expected a list of documents or {"documents": [...]}')
        return
    for index, item in enumerate(raw):
        yield _record(item, source, f"#{index}")


def _load_csv(source: SourceFile) -> Iterator[LoadedDocument | LoadProblem]:
    with source.path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        qa = "question" in columns and "answer" in columns
        if not qa and not any(f in columns for f in _TEXT_FIELDS):
            yield LoadProblem(
                source.relative, "CSV needs question and answer columns, or a text column"
            )
            return
        for number, row in enumerate(reader, start=2):
            values = {key: (row.get(original) or "").strip() for key, original in columns.items()}
            where = f"{source.relative}#row{number}"
            if qa:
                question, answer = values.pop("question"), values.pop("answer")
                if not question or not answer:
                    yield LoadProblem(where, "question or answer is empty")
                    continue
                # The question is embedded with its answer: users ask in words close to it.
                text = f"{question}\n{answer}"
                values["question"] = question
            else:
                field_name = next(f for f in _TEXT_FIELDS if f in columns)
                text = values.pop(field_name)
                if not text:
                    yield LoadProblem(where, "text is empty")
                    continue
            doc_id = next((values.pop(f) for f in _ID_FIELDS if values.get(f)), None)
            for f in _ID_FIELDS:
                values.pop(f, None)
            metadata = {"source": source.relative, **_scalar_metadata(values)}
            yield LoadedDocument(doc_id or where, text, metadata)
