"""The retriever under real gunicorn: stopped and started again on its directory, same answers."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from qa_common.process import ServiceProcess
from retriever_service.ingest import main as ingest_main
from tests.conftest import DATA_DIR, assert_error_envelope

pytestmark = pytest.mark.slow

QUERIES = [
    "what's the monthly price for comfort plus?",
    "what kind of coin battery goes in the room sensor",
    "what hours can I phone support on a Saturday",
    "how do I wipe the thermostat back to factory settings",
]


class Retriever:
    """Starts the retriever under gunicorn on a free port; always stopped by the fixture."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = {
            "CHROMA_PATH": str(tmp_path / "chroma"),
            "HF_HUB_OFFLINE": "1",
            "LOG_LEVEL": "WARNING",
            "RETRIEVER_THREADS": "4",
        }
        self.log_path = tmp_path / "retriever.log"
        self.process: ServiceProcess | None = None

    def start(self) -> str:
        self.process = ServiceProcess("retriever_service", env=self.env, log_path=self.log_path)
        self.process.start()
        self.process.wait_ready(timeout_s=180)
        return self.process.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            assert self.process.process is not None
            assert self.process.process.returncode is not None
            self.process = None


@pytest.fixture
def retriever(tmp_path: Path) -> Iterator[Retriever]:
    service = Retriever(tmp_path)
    try:
        yield service
    finally:
        service.stop()


def snapshot(url: str) -> tuple[dict[str, Any], list[list[tuple[str, float, Any]]]]:
    stats = requests.get(url + "/v1/stats", timeout=30).json()
    results = []
    for query in QUERIES:
        for mode in ("dense", "lexical", "hybrid"):
            response = requests.post(
                url + "/v1/search", json={"query": query, "top_k": 3, "mode": mode}, timeout=30
            )
            assert response.status_code == 200, response.text
            results.append(
                [
                    (h["chunk_id"], round(h["score"], 4), h["lexical_score"])
                    for h in response.json()["results"]
                ]
            )
    return {k: stats[k] for k in ("documents", "chunks", "model", "dimension")}, results


def test_restart_keeps_documents_and_results(
    retriever: Retriever, capsys: pytest.CaptureFixture[str]
) -> None:
    url = retriever.start()
    assert ingest_main([str(DATA_DIR), "--url", url, "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(url)
    assert before[0]["documents"] >= 45
    assert all(len(r) == 3 for r in before[1])
    response = requests.post(url + "/v1/search", json={"query": ""}, timeout=30)
    assert_error_envelope(response, 422)
    retriever.stop()

    url = retriever.start()
    after = snapshot(url)
    assert after == before
    # And the restarted service still sees everything as stored: nothing to re-embed.
    assert ingest_main([str(DATA_DIR), "--url", url, "--quiet"]) == 0
    assert "chunks written:    0" in capsys.readouterr().out
    metrics = requests.get(url + "/metrics", timeout=30).text
    assert "http_requests_total" in metrics


def test_a_retriever_killed_mid_ingest_restarts_with_an_index_that_matches_chroma(
    retriever: Retriever, tmp_path: Path
) -> None:
    """SIGKILL while documents and their lexical index are being written; then restart."""
    url = retriever.start()
    assert ingest_main([str(DATA_DIR), "--url", url, "--quiet"]) == 0
    before = snapshot(url)
    big = [
        {"id": f"bulk-{i}", "text": f"Bulk note {i} about code BK-{i}. " + "Filler words. " * 400}
        for i in range(60)
    ]

    def send() -> None:
        with contextlib.suppress(requests.RequestException):  # the server dies under it
            requests.post(url + "/v1/documents", json={"documents": big}, timeout=120)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    time.sleep(1.0)  # the request is being chunked, embedded or written now
    assert retriever.process is not None
    retriever.process.kill()
    sender.join(timeout=60)
    retriever.process = None

    url = retriever.start()
    after = snapshot(url)
    # Whatever of the bulk request landed, the sample data answers as before (dense results
    # are every third row; lexical scores move with the collection's size)...
    assert after[0]["documents"] >= before[0]["documents"]
    assert after[1][::3] == before[1][::3]
    # ...and the kept lexical index answers exactly as one rebuilt from Chroma alone.
    retriever.stop()
    index_file = Path(retriever.env["CHROMA_PATH"]) / "lexical-index.sqlite3"
    assert index_file.exists()
    for leftover in index_file.parent.glob("lexical-index.sqlite3*"):
        leftover.unlink()
    url = retriever.start()
    assert snapshot(url) == after
