"""The lexical index on its own: SQLite FTS5 tokenizing, stemming, BM25, updates, durability."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from retriever_service.lexical import (
    LexicalChunk,
    LexicalIndex,
    bm25_idf,
    query_terms,
)

ROOT = Path(__file__).resolve().parents[2]


# Starts replacing a document's chunks in the index file given, then dies before committing.
_KILLED_WRITER = """
import os, sys
sys.path.insert(0, sys.argv[1])
from retriever_service.lexical import LexicalIndex, LexicalChunk
index = LexicalIndex(sys.argv[2])
index._conn.execute("BEGIN IMMEDIATE")
index._conn.execute("DELETE FROM chunks")
index._conn.execute("DELETE FROM fts_1")
index._insert(1, [LexicalChunk("d:1", "d", "h9", "half written E3 text")])
os._exit(9)
"""


def chunk(chunk_id: str, text: str, document_id: str | None = None, digest: str = "h1"):
    return LexicalChunk(chunk_id, document_id or chunk_id.split(":")[0], digest, text)


@pytest.fixture
def index() -> LexicalIndex:
    idx = LexicalIndex()
    idx.replace_documents(
        "docs",
        ["trouble", "models", "plans"],
        [
            chunk("trouble:0", "E3: the wires do not match. E7: a firmware update failed."),
            chunk("models:0", "The HT-250 thermostat runs on batteries; the HT-300 is wired."),
            chunk("plans:0", "The Household plan costs $5.99 per month, billed yearly."),
            chunk("plans:1", "Installing the thermostats is included in every plan."),
        ],
    )
    return idx


def ids(hits: list[tuple[str, float]]) -> list[str]:
    return [chunk_id for chunk_id, _ in hits]


def test_query_terms_drop_stop_words_and_keep_codes_whole() -> None:
    assert query_terms("What does code E7 on the display mean?") == [
        "what",
        "does",
        "code",
        "e7",
        "display",
        "mean",
    ]
    assert query_terms("Is the HT-250 in stock?") == ["ht-250", "stock"]
    assert query_terms("the a of, is it?!") == []
    assert query_terms("...???") == []
    assert query_terms("Plan plan PLAN") == ["plan"]


def test_an_exact_code_ranks_the_chunk_holding_it_first(index: LexicalIndex) -> None:
    assert ids(index.search("docs", ["e7"], 5)) == ["trouble:0"]
    assert ids(index.search("docs", ["ht-250"], 5)) == ["models:0"]
    # "ht-250" is a phrase: a chunk naming only the HT-300 does not match it through "ht".
    index.replace_documents("docs", ["other"], [chunk("other:0", "Only the HT-300 here.")])
    assert ids(index.search("docs", ["ht-250"], 5)) == ["models:0"]
    assert ids(index.search("docs", ["5.99"], 5)) == ["plans:0"]


def test_words_match_through_their_stem(index: LexicalIndex) -> None:
    # Porter stemming: "installation" and "installing" share the stem "instal".
    assert ids(index.search("docs", ["installation"], 5)) == ["plans:1"]
    assert set(ids(index.search("docs", ["thermostat"], 5))) == {"models:0", "plans:1"}


def test_scores_are_positive_bm25_best_first(index: LexicalIndex) -> None:
    hits = index.search("docs", ["thermostat", "wired"], 5)
    assert hits[0][0] == "models:0"  # holds both terms
    scores = [s for _, s in hits]
    assert all(s > 0 for s in scores)
    assert scores == sorted(scores, reverse=True)


def test_no_terms_unknown_collection_or_quotes_give_nothing(index: LexicalIndex) -> None:
    assert index.search("docs", [], 5) == []
    assert index.search("nowhere", ["e7"], 5) == []
    assert index.search("docs", ['say "hi'], 5) == []
    assert index.search("docs", ["e7"], 0) == []


def test_replacing_a_document_removes_its_old_chunks(index: LexicalIndex) -> None:
    index.replace_documents("docs", ["plans"], [chunk("plans:0", "The Pro plan costs $9.")])
    assert index.search("docs", ["household"], 5) == []
    assert ids(index.search("docs", ["pro"], 5)) == ["plans:0"]
    assert index.count("docs") == 3
    index.replace_documents("docs", ["plans"], [])
    assert index.count("docs") == 2
    assert index.search("docs", ["pro"], 5) == []


def test_collections_are_scored_apart() -> None:
    idx = LexicalIndex()
    idx.replace_documents("one", ["a"], [chunk("a:0", "alpha beta"), chunk("a:1", "alpha")])
    idx.replace_documents("two", ["b"], [chunk("b:0", "beta gamma")])
    assert idx.count("one") == 2
    assert idx.count("two") == 1
    _, stats = idx.term_stats("two", ["alpha", "beta"], ["b:0"])
    assert [s.document_frequency for s in stats] == [0, 1]
    idx.drop_collection("one")
    assert idx.collections() == ["two"]
    assert idx.search("one", ["alpha"], 5) == []


def test_term_stats_report_rarity_and_which_results_hold_the_term(index: LexicalIndex) -> None:
    total, stats = index.term_stats("docs", ["thermostat", "e7", "zigbee"], ["plans:1", "plans:0"])
    assert total == 4
    by_term = {s.term: s for s in stats}
    assert by_term["thermostat"].document_frequency == 2
    assert by_term["thermostat"].matching_chunk_ids == {"plans:1"}
    assert by_term["e7"].document_frequency == 1
    assert by_term["e7"].matching_chunk_ids == frozenset()
    assert by_term["zigbee"].document_frequency == 0
    assert by_term["zigbee"].idf == pytest.approx(bm25_idf(0, 4))
    # Rarer terms weigh more.
    assert by_term["zigbee"].idf > by_term["e7"].idf > by_term["thermostat"].idf > 0


def test_bm25_idf_is_lucenes_form() -> None:
    assert bm25_idf(1, 10) == pytest.approx(math.log(1 + 9.5 / 1.5))
    assert bm25_idf(10, 10) > 0


def test_fingerprint_lists_chunk_ids_and_hashes(index: LexicalIndex) -> None:
    index.replace_chunks("docs", ["trouble:0"], [chunk("plans:1", "changed", digest="h2")])
    assert index.fingerprint("docs") == {"models:0": "h1", "plans:0": "h1", "plans:1": "h2"}
    assert index.fingerprint("nowhere") == {}


def test_a_file_index_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "lexical.sqlite3"
    first = LexicalIndex(path)
    first.replace_documents("docs", ["d"], [chunk("d:0", "the E7 firmware code")])
    first.close()
    again = LexicalIndex(path)
    assert ids(again.search("docs", ["e7"], 5)) == ["d:0"]
    assert again.fingerprint("docs") == {"d:0": "h1"}


def test_a_process_killed_mid_update_leaves_the_last_committed_index(tmp_path: Path) -> None:
    path = tmp_path / "lexical.sqlite3"
    index = LexicalIndex(path)
    index.replace_documents("docs", ["d"], [chunk("d:0", "committed text about E7")])
    index.close()
    # Another process starts replacing the document and is killed before it commits.
    result = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(ROOT), str(path)], check=False, timeout=60
    )
    assert result.returncode == 9
    reopened = LexicalIndex(path)
    assert reopened.fingerprint("docs") == {"d:0": "h1"}
    assert ids(reopened.search("docs", ["e7"], 5)) == ["d:0"]
    assert reopened.search("docs", ["e3"], 5) == []


def test_a_failed_update_rolls_back(index: LexicalIndex) -> None:
    before = index.fingerprint("docs")
    # The same chunk id twice breaks a UNIQUE constraint halfway through the update.
    bad = [chunk("plans:0", "new text"), chunk("plans:0", "again")]
    with pytest.raises(sqlite3.IntegrityError):
        index.replace_documents("docs", ["plans"], bad)
    assert index.fingerprint("docs") == before
    assert ids(index.search("docs", ["household"], 5)) == ["plans:0"]
