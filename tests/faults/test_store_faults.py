"""The Chroma server going away under a real gunicorn retriever, and coming back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests

from qa_common.process import ServiceProcess
from tests.conftest import ChromaServer, assert_error_envelope

pytestmark = pytest.mark.slow
KEY = "faults-internal-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def poll(url: str, status: int, timeout_s: float = 60.0) -> requests.Response:
    """GET ``url`` until it answers ``status`` (or the time is up); return the last answer."""
    deadline = time.monotonic() + timeout_s
    response = requests.get(url, timeout=30)
    while response.status_code != status and time.monotonic() < deadline:
        time.sleep(0.3)
        response = requests.get(url, timeout=30)
    return response


def search(url: str) -> Any:
    return requests.post(
        f"{url}/v1/search", json={"query": "vent code"}, headers=HEADERS, timeout=60
    )


def test_chroma_stopped_is_503_and_its_return_is_served_without_a_restart(
    chroma_server: ChromaServer, tmp_path: Path
) -> None:
    retriever = ServiceProcess(
        "retriever_service",
        env={
            "CHROMA_HOST": "127.0.0.1",
            "CHROMA_PORT": str(chroma_server.port),
            "INTERNAL_API_KEY": KEY,
            "READINESS_INTERVAL_S": "0.5",
            "HF_HUB_OFFLINE": "1",
            "LOG_LEVEL": "WARNING",
        },
        log_path=tmp_path / "retriever.log",
    )
    with retriever:
        retriever.wait_ready(timeout_s=180)
        stored = requests.post(
            f"{retriever.url}/v1/documents",
            json={"documents": [{"id": "v", "text": "Vent code V9 means the damper is stuck."}]},
            headers=HEADERS,
            timeout=120,
        )
        assert stored.status_code == 200, stored.text
        assert search(retriever.url).json()["results"][0]["document_id"] == "v"
        pid = retriever.process.pid if retriever.process else None

        chroma_server.stop()
        error = assert_error_envelope(poll(f"{retriever.url}/readyz", 503), 503, "not_ready")
        assert "chroma" in error["message"].lower()
        assert_error_envelope(search(retriever.url), 503)
        assert requests.get(f"{retriever.url}/healthz", timeout=10).status_code == 200

        chroma_server.start()  # same port, same data
        assert poll(f"{retriever.url}/readyz", 200).status_code == 200
        answer = search(retriever.url)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["document_id"] == "v"
        assert retriever.process is not None
        assert retriever.process.pid == pid
