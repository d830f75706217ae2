"""``ingest --sync`` and ``--watch`` against a retriever served over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from retriever_service.folder_sync import folder_key, stale_documents
from retriever_service.ingest import main
from tests.conftest import REPO_ROOT, serve_app
from tests.retriever_service.sample_files import pdf_bytes


@pytest.fixture
def retriever_url(app: Any) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def stored_ids(url: str) -> set[str]:
    response = requests.get(f"{url}/v1/documents", params={"limit": 500}, timeout=30)
    response.raise_for_status()
    return {d["id"] for d in response.json()["documents"]}


def write_folder(folder: Path) -> None:
    (folder / "guides").mkdir(parents=True)
    (folder / "guides" / "setup.md").write_text("# Setup\n\nPlug it in.\n", encoding="utf-8")
    (folder / "hours.txt").write_text("Support is open 9 to 5.\n", encoding="utf-8")
    (folder / "faq.csv").write_text(
        "question,answer\nIs there an app?,Yes.\nDoes it need Wi-Fi?,Yes.\n", encoding="utf-8"
    )
    (folder / "manual.pdf").write_bytes(pdf_bytes(["Page one of the manual.", "Page two."]))


def test_stale_documents_are_this_folders_documents_no_longer_held() -> None:
    key = "/data"
    stored = [
        {"id": "a.md", "source": "a.md", "metadata": {"source_root": key}},
        {"id": "gone.md", "source": "gone.md", "metadata": {"source_root": key}},
        {"id": "other.md", "source": "other.md", "metadata": {"source_root": "/elsewhere"}},
        {"id": "upload.pdf", "source": "upload.pdf", "metadata": {}},
        {"id": "faq.csv#row2", "source": "faq.csv", "metadata": {}},
        {"id": "broken.pdf", "source": "broken.pdf", "metadata": {"source_root": key}},
    ]
    current = {"a.md": {"a.md"}, "faq.csv": {"faq.csv#1a2b"}}
    stale = stale_documents(stored, key, current, unreadable={"broken.pdf"})
    # Gone from the folder; and a record stored under an id from before ids were by content.
    assert stale == ["gone.md", "faq.csv#row2"]
    assert stale_documents(stored, key, current, unreadable=set(), scope={"a.md"}) == []
    # A folder moved away whole arrives as one event for the folder.
    nested = [{"id": "guides/x.md", "source": "guides/x.md", "metadata": {"source_root": key}}]
    assert stale_documents(nested, key, {}, unreadable=set(), scope={"guides"}) == ["guides/x.md"]


def test_sync_deletes_what_the_folder_no_longer_holds_and_nothing_else(
    tmp_path: Path, retriever_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "kb"
    write_folder(folder)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("Another folder's note.\n", encoding="utf-8")
    assert main([str(folder), "--url", retriever_url, "--quiet", "--sync"]) == 0
    assert main([str(other), "--url", retriever_url, "--quiet"]) == 0
    # Stored under the ids of the old loader (rows by number), before this version.
    old = [
        {"id": "faq.csv#row2", "text": "Is there an app?\nYes.", "metadata": {"source": "faq.csv"}},
        {"id": "notes-upload.txt", "text": "Uploaded by hand.", "metadata": {"source": "x.txt"}},
    ]
    requests.post(f"{retriever_url}/v1/documents", json={"documents": old}, timeout=60)
    before = stored_ids(retriever_url)
    rows = {i for i in before if i.startswith("faq.csv#") and i != "faq.csv#row2"}
    assert len(rows) == 2

    (folder / "hours.txt").unlink()
    (folder / "manual.pdf").write_bytes(b"%PDF-1.7 broken on purpose")
    capsys.readouterr()
    assert main([str(folder), "--url", retriever_url, "--quiet", "--sync"]) == 1
    out = capsys.readouterr().out
    after = stored_ids(retriever_url)
    assert "hours.txt" not in after
    assert "faq.csv#row2" not in after
    # An unreadable file keeps what was stored of it; other folders and uploads are untouched.
    assert {"manual.pdf", "guides/setup.md", "keep.txt", "notes-upload.txt"} <= after
    assert rows <= after
    assert "deleted:         2" in out


def wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError("the watched change never arrived")


@pytest.mark.slow
def test_watch_picks_up_an_add_a_change_and_a_delete(tmp_path: Path, retriever_url: str) -> None:
    folder = tmp_path / "kb"
    write_folder(folder)
    log = (tmp_path / "watch.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "retriever_service.ingest", str(folder)]
    watch = subprocess.Popen(
        [*command, "--url", retriever_url, "--quiet", "--watch", "--debounce", "0.5"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=REPO_ROOT,
    )
    try:
        wait_for(lambda: "manual.pdf" in stored_ids(retriever_url))
        wait_for(lambda: "watching" in (tmp_path / "watch.log").read_text())

        (folder / "new.md").write_text("# New\n\nThe filter is changed every 90 days.\n")
        wait_for(lambda: "new.md" in stored_ids(retriever_url))

        (folder / "hours.txt").write_text("Support is open 8 to 8 every day.\n", encoding="utf-8")

        def hours_changed() -> bool:
            found = requests.get(f"{retriever_url}/v1/documents/hours.txt", timeout=30).json()
            return "8 to 8" in " ".join(found.get("chunk_texts", []))

        wait_for(hours_changed)

        (folder / "guides" / "setup.md").unlink()
        wait_for(lambda: "guides/setup.md" not in stored_ids(retriever_url))
        assert {"new.md", "hours.txt", "manual.pdf"} <= stored_ids(retriever_url)
    finally:
        watch.send_signal(signal.SIGTERM)
        try:
            watch.wait(timeout=30)
        finally:
            watch.kill()
            log.close()
    assert watch.returncode == 0, (tmp_path / "watch.log").read_text()


def test_sync_needs_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    note = tmp_path / "note.txt"
    note.write_text("x", encoding="utf-8")
    assert main([str(note), "--sync", "--url", "http://127.0.0.1:9"]) == 2
    assert "folders only" in capsys.readouterr().err
    assert folder_key(tmp_path) == str(tmp_path.resolve())
