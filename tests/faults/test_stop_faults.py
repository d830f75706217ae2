"""SIGTERM to a real retriever while it writes, and to a real generator while it generates."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qa_common.process import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEY = "stop-faults-internal-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
WORDS = "river glacier sediment basin delta estuary tributary meander floodplain levee".split()


def in_flight(service: ServiceProcess) -> float:
    """Requests a service is serving now, from its own /metrics."""
    response = requests.get(f"{service.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "http_requests_in_flight"
    )


def wait_in_flight(service: ServiceProcess, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while in_flight(service) < count:
        assert time.monotonic() < deadline, f"never {count} requests in flight"
        time.sleep(0.02)


def post_in_background(url: str, body: dict[str, Any], results: list[Any]) -> threading.Thread:
    def post() -> None:
        response = requests.post(url, json=body, headers=AUTH, timeout=240)
        results.append((response.status_code, response.json()))

    thread = threading.Thread(target=post)
    thread.start()
    return thread


def retriever_process(tmp_path: Path, name: str) -> ServiceProcess:
    return ServiceProcess(
        "retriever_service",
        env={
            "CHROMA_PATH": str(tmp_path / "chroma"),
            "INTERNAL_API_KEY": KEY,
            "HF_HUB_OFFLINE": "1",
            "LOG_LEVEL": "WARNING",
        },
        log_path=tmp_path / f"{name}.log",
    )


def test_sigterm_while_the_retriever_writes_lets_the_write_finish_whole(tmp_path: Path) -> None:
    # ~3 chunks each: a write of several seconds, long enough to stop the service inside it.
    documents = [
        {
            "id": f"doc-{i}",
            "text": " ".join(
                f"{WORDS[(i + k) % len(WORDS)]} {k} of document {i}." for k in range(160)
            ),
        }
        for i in range(150)
    ]
    results: list[Any] = []
    retriever = retriever_process(tmp_path, "first")
    with retriever:
        retriever.wait_ready(timeout_s=120)
        writer = post_in_background(
            f"{retriever.url}/v1/documents", {"documents": documents}, results
        )
        wait_in_flight(retriever, 1)
        retriever.stop(timeout_s=60)  # SIGTERM: gunicorn stops accepting, finishes what it has
        writer.join(timeout=60)
    assert len(results) == 1, "the write was answered"
    status, body = results[0]
    assert status == 200, body
    assert (body["documents"], body["created"]) == (150, 150), body
    assert body["chunks"] > 150, body

    # What was acknowledged is all there after a restart, and nothing more.
    with retriever_process(tmp_path, "second") as again:
        again.wait_ready(timeout_s=120)
        stats = requests.get(f"{again.url}/v1/stats", headers=AUTH, timeout=30).json()
    assert (stats["documents"], stats["chunks"]) == (150, body["chunks"]), stats


def test_sigterm_while_the_generator_generates_lets_the_answers_finish(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    generator = ServiceProcess(
        "generator_service",
        env={
            "GENERATOR_MODEL": str(smollm2_dir),
            "GENERATOR_TORCH_THREADS": "1",
            "INTERNAL_API_KEY": KEY,
            "HF_HUB_OFFLINE": "1",
            "LOG_LEVEL": "WARNING",
        },
        log_path=tmp_path / "generator.log",
    )
    body = {
        "question": "Where does the sediment settle?",
        "snippets": ["The river carries sediment to the delta, where it settles."],
        # The same length every time, seconds of work on this model: still going at the stop.
        "max_new_tokens": 48,
        "min_new_tokens": 48,
    }
    results: list[Any] = []
    with generator:
        generator.wait_ready(timeout_s=180)
        askers = [
            post_in_background(f"{generator.url}/v1/generate", body, results) for _ in range(2)
        ]
        wait_in_flight(generator, 2)
        generator.stop(timeout_s=60)
        for asker in askers:
            asker.join(timeout=60)
    assert [status for status, _ in results] == [200, 200], results
    # Whole answers, not cut short by the stop.
    assert all(answer["completion_tokens"] == 48 for _, answer in results), results
    assert all(answer["answer"].strip() for _, answer in results), results
