"""One process per embedded Chroma directory: a second one gets a clear error, not a store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from retriever_service.store import ChromaStore, CollectionSpec
from tests.conftest import REPO_ROOT

SPEC = CollectionSpec("sentence-transformers/all-MiniLM-L6-v2", 384)


def test_a_second_process_on_the_same_embedded_directory_is_refused(tmp_path: Path) -> None:
    chroma = tmp_path / "chroma"
    ChromaStore(SPEC, path=str(chroma))
    ChromaStore(SPEC, path=str(chroma))  # the same process may open it again: one store
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "note.txt").write_text("The filter is changed every 90 days.\n", encoding="utf-8")
    # What a user might run beside a retriever serving the same directory.
    result = subprocess.run(
        [sys.executable, "-m", "retriever_service.ingest", str(folder), "--in-process", "--quiet"],
        cwd=REPO_ROOT,
        env={**os.environ, "CHROMA_PATH": str(chroma), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "in use by another process" in result.stderr, result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert "CHROMA_HOST" in result.stderr
    # Nothing was written by the refused process.
    assert not any(chroma.glob("*/data_level0.bin"))
