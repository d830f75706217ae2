"""The ingestion CLI end to end: ``main([...])`` against a retriever served over real HTTP."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qa_common.errors import ValidationFailed
from qa_common.process import free_port
from retriever_service.ingest import IngestSummary, main, run_ingest
from retriever_service.loaders import LoadedDocument
from tests.conftest import serve_app


def summary_numbers(text: str) -> dict[str, int]:
    """Parse the summary the CLI prints into {label: number}."""
    numbers = {}
    for line in text.splitlines():
        match = re.match(r"^\s*([a-z ]+):\s+(\d+)", line)
        if match:
            numbers[match.group(1).strip()] = int(match.group(2))
    return numbers


@pytest.fixture
def kb_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "kb"
    (folder / "guides").mkdir(parents=True)
    (folder / "guides" / "setup.md").write_text(
        "# Setup\n\n" + " ".join(f"Step {i}: tighten screw {i} on the bracket." for i in range(80)),
        encoding="utf-8",
    )
    (folder / "hours.txt").write_text("Support is open 9 to 5 on weekdays.\n", encoding="utf-8")
    (folder / "faq.csv").write_text(
        "id,question,answer\nq1,Is there an app?,Yes.\nq2,Does it need Wi-Fi?,Yes, 2.4 GHz.\n",
        encoding="utf-8",
    )
    (folder / "notes.jsonl").write_text(
        json.dumps({"id": "n1", "text": "Note one.", "metadata": {"kind": "note"}}) + "\n",
        encoding="utf-8",
    )
    (folder / "photo.png").write_bytes(b"\x89PNG")
    return folder


@pytest.fixture
def retriever_url(app: Any) -> Iterator[str]:
    with serve_app(app) as url:
        yield url


def stats(app: Any) -> dict[str, Any]:
    return app.test_client().get("/v1/stats").get_json()


def test_cli_twice_changes_nothing(
    app: Any, retriever_url: str, kb_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(kb_folder), "--url", retriever_url, "--quiet", "--batch-size", "2"]) == 0
    first = summary_numbers(capsys.readouterr().out)
    assert first["documents"] == 5
    assert first["created"] == 5
    assert first["unchanged"] == 0
    assert first["failed"] == 0
    assert first["chunks written"] > 5
    assert first["files read"] == 4
    after_first = stats(app)
    assert (after_first["documents"], after_first["chunks"]) == (5, first["chunks written"])

    assert main([str(kb_folder), "--url", retriever_url, "--quiet"]) == 0
    second = summary_numbers(capsys.readouterr().out)
    assert second["documents"] == 5
    assert second["unchanged"] == 5
    assert second["created"] == 0
    assert second["updated"] == 0
    assert second["chunks written"] == 0
    after_second = stats(app)
    assert (after_second["documents"], after_second["chunks"]) == (
        after_first["documents"],
        after_first["chunks"],
    )


def test_cli_edited_file_is_updated(
    app: Any, retriever_url: str, kb_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(kb_folder), "--url", retriever_url, "--quiet"]) == 0
    capsys.readouterr()
    (kb_folder / "hours.txt").write_text("Support is open around the clock.\n", encoding="utf-8")
    assert main([str(kb_folder), "--url", retriever_url, "--quiet"]) == 0
    numbers = summary_numbers(capsys.readouterr().out)
    assert (numbers["updated"], numbers["unchanged"], numbers["chunks written"]) == (1, 4, 1)


def test_cli_collection_option(
    app: Any, retriever_url: str, kb_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [str(kb_folder / "hours.txt"), "--url", retriever_url, "--quiet"]
    assert main([*args, "--collection", "hours-kb"]) == 0
    assert app.test_client().get("/v1/stats?collection=hours-kb").get_json()["documents"] == 1
    assert stats(app)["documents"] == 0


def test_cli_exit_1_with_failures_keeps_the_good_documents(
    app: Any, retriever_url: str, kb_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (kb_folder / "notes.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("{broken json\n")
        # Loads fine, but the retriever rejects it (metadata keys are limited to 256 chars).
        handle.write(json.dumps({"id": "n9", "text": "Rejected.", "metadata": {"k" * 300: 1}}))
        handle.write("\n")
    assert main([str(kb_folder), "--url", retriever_url, "--quiet"]) == 1
    out = capsys.readouterr().out
    numbers = summary_numbers(out)
    assert numbers["failed"] == 2
    assert numbers["created"] == 5
    assert "notes.jsonl#L2" in out
    assert "n9" in out
    assert stats(app)["documents"] == 5


def test_cli_exit_2_for_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main([str(tmp_path / "does-not-exist"), "--url", url, "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_exit_1_when_retriever_unreachable(
    kb_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main([str(kb_folder), "--url", url, "--quiet"]) == 1
    assert "cannot be reached" in capsys.readouterr().err


def test_run_ingest_isolates_a_rejected_document() -> None:
    """A rejected batch is retried one document at a time; only the bad one fails."""
    sent: list[list[str]] = []

    def send(batch: list[dict[str, Any]]) -> dict[str, Any]:
        sent.append([d["id"] for d in batch])
        if any(d["id"] == "bad" for d in batch):
            raise ValidationFailed("bad document")
        return {"results": [{"id": d["id"], "status": "created", "chunks": 2} for d in batch]}

    documents = [LoadedDocument(i, f"text {i}") for i in ["a", "bad", "c", "d"]]
    summary = run_ingest(documents, send, IngestSummary(), batch_size=3, progress=False)
    assert sent == [["a", "bad", "c"], ["a"], ["bad"], ["c"], ["d"]]
    assert summary.documents == 3
    assert summary.chunks == 6
    assert [(p.source, p.message) for p in summary.problems] == [("bad", "bad document")]


@pytest.mark.slow
def test_cli_in_process(
    tmp_path: Path,
    kb_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    make_app: Any,
) -> None:
    monkeypatch.setenv("CHROMA_PATH", str(tmp_path / "chroma"))
    assert main([str(kb_folder), "--in-process", "--quiet"]) == 0
    assert summary_numbers(capsys.readouterr().out)["created"] == 5
    assert main([str(kb_folder), "--in-process", "--quiet"]) == 0
    assert summary_numbers(capsys.readouterr().out)["unchanged"] == 5
    # What it wrote is what a retriever on the same directory serves.
    assert stats(make_app())["documents"] == 5
