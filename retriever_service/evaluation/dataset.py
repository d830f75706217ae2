"""Read a BEIR-layout dataset folder and split its judged queries into dev and test halves."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retriever_service.evaluation.metrics import relevant

Qrels = dict[str, dict[str, int]]

# Part of every query's hash: changing it reshuffles the halves, so it stays fixed and is printed
# with each run; figures on "test" are only comparable under the same seed.
SPLIT_SEED = "retriever-eval-split-v1"
QUERY_SPLITS = ("all", "dev", "test")


class DatasetError(ValueError):
    """The dataset folder is missing a file or holds a malformed record."""


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
        return [q for q in self.queries if relevant(self.qrels.get(q, {}))]


def query_half(query_id: str, seed: str = SPLIT_SEED) -> str:
    """Return "dev" or "test" for a query, from the parity of a hash of the seed and its id."""
    # A hash of the id, not the file position, so a query keeps its half when others are
    # added or reordered.
    digest = hashlib.sha256(f"{seed}\x00{query_id}".encode()).digest()
    return "dev" if digest[-1] % 2 == 0 else "test"


def select_queries(query_ids: Sequence[str], part: str, seed: str = SPLIT_SEED) -> list[str]:
    """Return the queries of one split ("all", "dev" or "test"), keeping their order."""
    if part not in QUERY_SPLITS:
        raise ValueError(f"unknown query split {part!r}; expected one of {QUERY_SPLITS}")
    if part == "all":
        return list(query_ids)
    return [q for q in query_ids if query_half(q, seed) == part]


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
