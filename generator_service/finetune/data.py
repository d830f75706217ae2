"""Read question/answer files (CSV, JSONL, JSON), checking every row and naming the bad one."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".csv", ".jsonl", ".json")
# A context may be one text or a list of snippets; more than this is not a prompt's worth.
MAX_CONTEXT_SNIPPETS = 20


class DataError(ValueError):
    """A training file that cannot be used, with the file and row at fault."""

    def __init__(self, path: Path | str, message: str, row: int | None = None) -> None:
        where = f"{path}, row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.row = row


@dataclass(frozen=True)
class QARecord:
    """One question with its reference answer, as the user wrote it."""

    id: str
    question: str
    # None for a question the snippets cannot answer: the model learns to decline it.
    answer: str | None
    # Given snippets; empty when they come from the gateway.
    context: tuple[str, ...]
    file: str
    row: int


def read_records(paths: list[Path]) -> list[QARecord]:
    """Read every file; raise ``DataError`` at the first bad file, row or duplicate id."""
    records: list[QARecord] = []
    seen: dict[str, QARecord] = {}
    for path in paths:
        for record in read_file(path):
            earlier = seen.get(record.id)
            if earlier is not None:
                raise DataError(
                    path,
                    f"id {record.id!r} was already used at {earlier.file}, row {earlier.row}",
                    record.row,
                )
            seen[record.id] = record
            records.append(record)
    return records


def read_file(path: Path) -> list[QARecord]:
    """Read one file by its suffix."""
    if not path.is_file():
        raise DataError(path, "no such file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(
            path, f"unsupported file type {suffix or '(none)'}; use {', '.join(SUFFIXES)}"
        )
    try:
        if suffix == ".csv":
            rows = list(_csv_rows(path))
        elif suffix == ".jsonl":
            rows = list(_jsonl_rows(path))
        else:
            rows = list(_json_rows(path))
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not rows:
        raise DataError(path, "empty file: no question/answer records")
    return [_record(path, row, fields) for row, fields in rows]


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if not columns:
            return
        missing = [c for c in ("question", "answer") if c not in columns]
        if missing:
            raise DataError(
                path,
                f"missing column(s) {', '.join(missing)}; the header has {', '.join(columns)}",
                1,
            )
        for fields in reader:
            if None in fields:
                raise DataError(path, "more values than the header has columns", reader.line_num)
            yield reader.line_num, {(k or "").strip(): v for k, v in fields.items()}


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"not valid JSON ({exc.msg})", number) from None
            yield number, _object(path, value, number)


def _json_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if isinstance(value, dict) and isinstance(value.get("records"), list):
        value = value["records"]
    if not isinstance(value, list):
        raise DataError(path, 'expected a list of records (or {"records": [...]})')
    for number, item in enumerate(value, start=1):
        yield number, _object(path, item, number)


def _object(path: Path, value: Any, row: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(path, f"expected an object, found {type(value).__name__}", row)
    return value


def _text(path: Path, fields: dict[str, Any], name: str, row: int) -> str:
    value = fields.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(path, f"{name!r} is missing or empty", row)
    if not isinstance(value, str):
        raise DataError(path, f"{name!r} must be text, found {type(value).__name__}", row)
    return " ".join(value.split())


def _context(path: Path, value: Any, row: int) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    snippets = [value] if isinstance(value, str) else value
    if not isinstance(snippets, list) or not all(isinstance(s, str) for s in snippets):
        raise DataError(path, "'context' must be a text or a list of texts", row)
    kept = tuple(s.strip() for s in snippets if s.strip())
    if len(kept) > MAX_CONTEXT_SNIPPETS:
        raise DataError(
            path, f"'context' has {len(kept)} snippets; at most {MAX_CONTEXT_SNIPPETS}", row
        )
    return kept


def _record(path: Path, row: int, fields: dict[str, Any]) -> QARecord:
    question = _text(path, fields, "question", row)
    unanswerable = fields.get("unanswerable") in (True, "true", "True", "1", 1)
    answer = None if unanswerable else _text(path, fields, "answer", row)
    context = _context(path, fields.get("context"), row)
    if unanswerable and not context:
        raise DataError(
            path, "an unanswerable record needs the 'context' it cannot be answered from", row
        )
    raw_id = fields.get("id")
    if raw_id is not None and not isinstance(raw_id, str | int):
        raise DataError(path, "'id' must be text or a number", row)
    # Without an id, the question names the record: inserting rows does not renumber others.
    record_id = (
        str(raw_id).strip()
        if raw_id not in (None, "")
        else (f"{path.name}#{hashlib.sha256(question.encode()).hexdigest()[:12]}")
    )
    return QARecord(record_id, question, answer, context, str(path), row)
