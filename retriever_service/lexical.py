"""The lexical index: BM25 over chunk texts, one SQLite FTS5 table per collection.

SQLite's FTS5 does the tokenizing (Unicode, diacritics folded), the stemming (Porter) and the
BM25 scoring; it updates in place and commits atomically, so the index follows every write without
a rebuild and a crash mid-update rolls back to the last committed state. The index only proposes
chunk ids: ChromaDB stays the source of truth, and ``lexical_sync`` keeps the two in step.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Lucene's English stop set (EnglishAnalyzer, the one Pyserini's BM25 uses). Only the query drops
# them: a question made of them alone ("what is it?") has no lexical evidence at all.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
# A query term: letters and digits, with inner hyphens, dots, slashes or apostrophes kept together
# so that "HT-250", "5.99" and "v2/3" match as phrases of their parts, as FTS5 indexed them.
_TERM = re.compile(r"[^\W_]+(?:[-./'’][^\W_]+)*")
_FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"
# A literal SQL fragment: table names are generated from an integer, never from user input.
_FTS_TABLE = "fts_{}"


@dataclass(frozen=True)
class LexicalChunk:
    """What the lexical index keeps of a stored chunk."""

    chunk_id: str
    document_id: str
    content_hash: str
    text: str


@dataclass(frozen=True)
class TermStat:
    """How rare one query term is in a collection, and which chunks hold it."""

    term: str
    document_frequency: int
    idf: float
    matching_chunk_ids: frozenset[str]


def query_terms(query: str) -> list[str]:
    """Split a query into its distinct lexical terms, lower-cased, stop words dropped."""
    terms = []
    for match in _TERM.finditer(query.lower()):
        term = match.group(0).replace("’", "'")
        if term not in STOP_WORDS and term not in terms:
            terms.append(term)
    return terms


def _phrase(term: str) -> str:
    # FTS5 runs its own tokenizer over a quoted string: "ht-250" becomes the phrase "ht 250".
    return '"' + term.replace('"', '""') + '"'


def bm25_idf(document_frequency: int, total: int) -> float:
    """Return BM25's inverse document frequency (Lucene's form, never negative)."""
    return math.log(1.0 + (total - document_frequency + 0.5) / (document_frequency + 0.5))


class LexicalIndex:
    """BM25 search over chunk texts, per collection; thread-safe, in memory or in one file."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = str(path) if path else ":memory:"
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        # Collection id → chunk count, dropped on every write: every search reports the count.
        self._counts: dict[int, int] = {}
        with self._lock:
            if path:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS collections (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    name TEXT NOT NULL UNIQUE
                );
                CREATE TABLE IF NOT EXISTS chunks (
                    rowid INTEGER PRIMARY KEY,
                    collection_id INTEGER NOT NULL,
                    chunk_id TEXT NOT NULL,
                    document_id TEXT NOT NULL,
                    content_hash TEXT NOT NULL,
                    UNIQUE (collection_id, chunk_id)
                );
                CREATE INDEX IF NOT EXISTS chunks_by_document
                    ON chunks (collection_id, document_id);
                """
            )

    @property
    def description(self) -> str:
        return "sqlite fts5 in memory" if self.path == ":memory:" else f"sqlite fts5 at {self.path}"

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- collections --------------------------------------------------------------------------

    def _collection_id(self, name: str, *, create: bool) -> int | None:
        row = self._conn.execute("SELECT id FROM collections WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row[0])
        if not create:
            return None
        cursor = self._conn.execute("INSERT INTO collections (name) VALUES (?)", (name,))
        collection_id = int(cursor.lastrowid or 0)
        self._conn.execute(
            f"CREATE VIRTUAL TABLE {_FTS_TABLE.format(collection_id)} "
            f"USING fts5(text, tokenize='{_FTS_TOKENIZER}')"
        )
        return collection_id

    def collections(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT name FROM collections ORDER BY name")]

    def drop_collection(self, name: str) -> None:
        """Forget a collection and everything indexed for it."""
        with self._lock, self._transaction():
            collection_id = self._collection_id(name, create=False)
            if collection_id is None:
                return
            self._counts.pop(collection_id, None)
            self._conn.execute(f"DROP TABLE {_FTS_TABLE.format(collection_id)}")
            self._conn.execute("DELETE FROM chunks WHERE collection_id = ?", (collection_id,))
            self._conn.execute("DELETE FROM collections WHERE id = ?", (collection_id,))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    # -- writes -------------------------------------------------------------------------------

    def replace_documents(
        self, collection: str, document_ids: Iterable[str], chunks: Sequence[LexicalChunk]
    ) -> None:
        """Make these documents' chunks exactly ``chunks`` (none: the documents are gone)."""
        with self._lock, self._transaction():
            collection_id = self._collection_id(collection, create=True)
            assert collection_id is not None
            rowids = [
                r[0]
                for doc in set(document_ids) | {c.document_id for c in chunks}
                for r in self._conn.execute(
                    "SELECT rowid FROM chunks WHERE collection_id = ? AND document_id = ?",
                    (collection_id, doc),
                )
            ]
            self._delete_rows(collection_id, rowids)
            self._insert(collection_id, chunks)

    def replace_chunks(
        self, collection: str, remove_chunk_ids: Iterable[str], chunks: Sequence[LexicalChunk]
    ) -> None:
        """Remove these chunk ids and put ``chunks`` in (replacing any with the same id)."""
        with self._lock, self._transaction():
            collection_id = self._collection_id(collection, create=True)
            assert collection_id is not None
            ids = set(remove_chunk_ids) | {c.chunk_id for c in chunks}
            rowids = [
                r[0]
                for chunk_id in ids
                for r in self._conn.execute(
                    "SELECT rowid FROM chunks WHERE collection_id = ? AND chunk_id = ?",
                    (collection_id, chunk_id),
                )
            ]
            self._delete_rows(collection_id, rowids)
            self._insert(collection_id, chunks)

    def _delete_rows(self, collection_id: int, rowids: Sequence[int]) -> None:
        table = _FTS_TABLE.format(collection_id)
        self._counts.pop(collection_id, None)
        for first in range(0, len(rowids), 500):
            batch = rowids[first : first + 500]
            marks = ",".join("?" * len(batch))
            self._conn.execute(f"DELETE FROM {table} WHERE rowid IN ({marks})", batch)  # noqa: S608
            self._conn.execute(f"DELETE FROM chunks WHERE rowid IN ({marks})", batch)  # noqa: S608

    def _insert(self, collection_id: int, chunks: Sequence[LexicalChunk]) -> None:
        table = _FTS_TABLE.format(collection_id)
        self._counts.pop(collection_id, None)
        for chunk in chunks:
            cursor = self._conn.execute(
                "INSERT INTO chunks (collection_id, chunk_id, document_id, content_hash) "
                "VALUES (?, ?, ?, ?)",
                (collection_id, chunk.chunk_id, chunk.document_id, chunk.content_hash),
            )
            self._conn.execute(
                f"INSERT INTO {table} (rowid, text) VALUES (?, ?)",  # noqa: S608
                (cursor.lastrowid, chunk.text),
            )

    # -- reads --------------------------------------------------------------------------------

    def fingerprint(self, collection: str) -> dict[str, str]:
        """Return chunk id → content hash for everything indexed in a collection."""
        with self._lock:
            collection_id = self._collection_id(collection, create=False)
            if collection_id is None:
                return {}
            return dict(
                self._conn.execute(
                    "SELECT chunk_id, content_hash FROM chunks WHERE collection_id = ?",
                    (collection_id,),
                )
            )

    def count(self, collection: str) -> int:
        with self._lock:
            collection_id = self._collection_id(collection, create=False)
            if collection_id is None:
                return 0
            if collection_id not in self._counts:
                row = self._conn.execute(
                    "SELECT count(*) FROM chunks WHERE collection_id = ?", (collection_id,)
                ).fetchone()
                self._counts[collection_id] = int(row[0])
            return self._counts[collection_id]

    def _rowids(self, collection_id: int, chunk_ids: Sequence[str]) -> dict[int, str]:
        """Return rowid → chunk id for those of these chunk ids that are indexed."""
        rowids: dict[int, str] = {}
        ids = list(dict.fromkeys(chunk_ids))
        for first in range(0, len(ids), 500):
            batch = ids[first : first + 500]
            rowids.update(
                self._conn.execute(
                    "SELECT rowid, chunk_id FROM chunks WHERE collection_id = ? "  # noqa: S608
                    f"AND chunk_id IN ({','.join('?' * len(batch))})",
                    (collection_id, *batch),
                )
            )
        return rowids

    def search(
        self,
        collection: str,
        terms: Sequence[str],
        limit: int,
    ) -> list[tuple[str, float]]:
        """Return (chunk id, BM25 score) best first for chunks holding any term."""
        if not terms or limit <= 0:
            return []
        expression = " OR ".join(_phrase(t) for t in terms)
        with self._lock:
            collection_id = self._collection_id(collection, create=False)
            if collection_id is None:
                return []
            table = _FTS_TABLE.format(collection_id)
            # FTS5's bm25() is lower-is-better (negated); report the usual positive score.
            sql = (
                f"SELECT c.chunk_id, -bm25({table}) FROM {table} "  # noqa: S608
                f"JOIN chunks c ON c.rowid = {table}.rowid WHERE {table} MATCH ?"
            )
            params: list[object] = [expression]
            sql += " ORDER BY rank LIMIT ?"
            params.append(limit)
            try:
                return [(r[0], float(r[1])) for r in self._conn.execute(sql, params)]
            except sqlite3.OperationalError:
                # A term FTS5 cannot parse even quoted; no lexical evidence rather than a 500.
                return []

    def term_stats(
        self, collection: str, terms: Sequence[str], chunk_ids: Sequence[str]
    ) -> tuple[int, list[TermStat]]:
        """Return the collection's chunk count and, per term, its rarity and matching chunks."""
        with self._lock:
            total = self.count(collection)
            collection_id = self._collection_id(collection, create=False)
            rowids = self._rowids(collection_id, chunk_ids) if collection_id is not None else {}
            stats = []
            for term in terms:
                frequency = 0
                matching: frozenset[str] = frozenset()
                if collection_id is not None:
                    table = _FTS_TABLE.format(collection_id)
                    try:
                        frequency = int(
                            self._conn.execute(
                                f"SELECT count(*) FROM {table} WHERE {table} MATCH ?",  # noqa: S608
                                (_phrase(term),),
                            ).fetchone()[0]
                        )
                        if rowids and frequency:
                            # No join: with one, SQLite walks the term's whole match list.
                            marks = ",".join("?" * len(rowids))
                            matching = frozenset(
                                rowids[r[0]]
                                for r in self._conn.execute(
                                    f"SELECT rowid FROM {table} "  # noqa: S608
                                    f"WHERE {table} MATCH ? AND rowid IN ({marks})",
                                    (_phrase(term), *rowids),
                                )
                            )
                    except sqlite3.OperationalError:
                        pass
                stats.append(
                    TermStat(
                        term=term,
                        document_frequency=frequency,
                        idf=round(bm25_idf(frequency, total), 6),
                        matching_chunk_ids=matching,
                    )
                )
            return total, stats


class _Transaction:
    """BEGIN … COMMIT around a block; ROLLBACK when it raises (the connection is autocommit)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._depth = 0

    def __enter__(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._depth:
            return
        if exc_type is None:
            self._conn.execute("COMMIT")
        else:
            self._conn.execute("ROLLBACK")
