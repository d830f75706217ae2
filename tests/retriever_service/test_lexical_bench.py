"""The lexical benchmark's parts run at a tiny size, so that the script cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import lexical_bench as bench
from retriever_service.store import ChromaStore
from retriever_service.versions import versioned_chunk_id

SIZE = 200


def test_chunks_and_queries_are_deterministic_and_prefix_stable() -> None:
    chunks = bench.synthetic_chunks(SIZE)
    assert len(chunks) == SIZE
    assert bench.synthetic_chunks(SIZE) == chunks
    assert bench.synthetic_chunks(SIZE + 100)[:SIZE] == chunks
    assert len({c.id for c in chunks}) == SIZE
    for c in chunks:
        assert c.id == versioned_chunk_id(c.document_id, c.version, c.position)
        assert 0 <= c.position < c.chunk_count <= 4
        assert 100 <= len(c.text.split()) <= 200
    queries = bench.synthetic_queries([c.text for c in chunks], 20)
    assert all(5 <= len(q.split()) <= 8 for q in queries)
    with pytest.raises(ValueError, match="multiples"):
        bench.synthetic_chunks(150)


def test_rebuild_freshness_and_write_parts(tmp_path: Path) -> None:
    chroma = tmp_path / "chroma"
    bench.build_chroma(chroma, SIZE)
    queries = bench.synthetic_queries([c.text for c in bench.synthetic_chunks(SIZE)], 10)
    kept = tmp_path / "kept.sqlite3"
    runs = [bench.measure_rebuild("service-file", chroma, SIZE, kept)]
    for variant in bench.VARIANTS:
        path = kept if variant == "restart-file" else tmp_path / f"{variant}.sqlite3"
        runs.append(bench.measure_rebuild(variant, chroma, SIZE, path, queries))
    for run in runs:
        if run.get("skipped"):
            assert run["variant"] == "bm25s"
            continue
        assert run["chunks"] == SIZE
        assert run["seconds"] > 0
    restart = next(r for r in runs if r["variant"] == "restart-file")
    # The file already matched Chroma: the restart fetched and inserted nothing.
    assert "fetch" not in restart["parts"]
    assert "insert" not in restart["parts"]
    assert len(restart["queries"]["search"]) == len(queries)
    fresh = runs[1]
    assert fresh["parts"]["scan"] > 0
    assert fresh["parts"]["fetch"] > 0

    def store() -> ChromaStore:
        return ChromaStore(bench.store_spec(), path=str(chroma))

    freshness = bench.freshness_figures(store, bench.synthetic_chunks(SIZE), 2, 20)
    assert freshness["big_log"]["log_records"] == freshness["small_log"]["log_records"] + 22
    assert len(freshness["small_log"]["after_write"]) == 2
    writes = bench.write_overhead_figures(store(), tmp_path / "w.sqlite3", 1, 20)
    assert len(writes["record_write"]) == 1
    assert writes["local_index"][0] > 0

    service = {
        "ingested_chunks": SIZE,
        "queries": 2,
        "ingest_request_s": [1.0, 1.2],
        "search": {
            mode: {
                "client": [0.010, 0.012],
                "embed_ms": [5.0, 6.0],
                "query_ms": [1.0, 1.0],
                "took_ms": [8.0, 9.0],
                "lexical_sync_ms": [0.5, 0.6],
                "lexical_ms": [1.0, 1.0],
                "hits": [5, 5],
            }
            for mode in ("bare", "dense", "lexical", "hybrid")
        },
    }
    results = {
        "repeats": {SIZE: 1},
        "rebuild": {SIZE: runs},
        "freshness_chunks": SIZE,
        "freshness": {"embedded Chroma": freshness},
        "write_requests": 1,
        "writes": {"embedded Chroma": writes},
        "service": service,
        "load": (1.0, 1.0),
        "seconds": 60.0,
        "machine": "Measured then.",
    }
    markdown = bench.render(results)
    assert "### 1. Lexical index rebuild" in markdown
    assert "hybrid" in markdown
    assert "est. ingest slowdown" in markdown
    assert "Measured then." in markdown
    # What a run keeps as JSON renders the same when read back (--render-only).
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(results))
    assert bench.render(bench.load_raw(raw)) == markdown


@pytest.mark.slow
def test_main_end_to_end_without_the_docs(tmp_path: Path) -> None:
    code = bench.main(
        [
            "--sizes",
            str(SIZE),
            "--no-docs",
            "--repeats",
            "1",
            "--queries-count",
            "8",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    raw = json.loads((tmp_path / "cache" / "last-run.json").read_text())
    assert raw["service"]["ingested_chunks"] == SIZE
    assert set(raw["service"]["search"]) == {"bare", "dense", "lexical", "hybrid"}
    # bm25s is a benchmark-only install: without it, its runs say so instead of failing.
    assert {r["variant"] for r in raw["rebuild"][str(SIZE)]} == set(bench.VARIANTS)
