"""Faults around a real gunicorn gateway: a stop while answering, a generator that hangs."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from qa_common.process import ServiceProcess
from tests.gateway.conftest import FakeGenerator, FakeRetriever

pytestmark = pytest.mark.slow


def gateway_process(
    tmp_path: Path, retriever: FakeRetriever, generator: FakeGenerator, **env: str
) -> ServiceProcess:
    return ServiceProcess(
        "gateway",
        env={
            "RETRIEVER_URL": retriever.url,
            "GENERATOR_URL": generator.url,
            "GATEWAY_WORKERS": "1",
            "LOG_LEVEL": "WARNING",
            **env,
        },
        log_path=tmp_path / "gateway.log",
    )


def test_sigterm_lets_the_answers_in_flight_finish(
    fake_retriever: FakeRetriever, fake_generator: FakeGenerator, tmp_path: Path
) -> None:
    fake_retriever.delay_s["/v1/search"] = 2.0  # each answer is still being worked on
    gateway = gateway_process(tmp_path, fake_retriever, fake_generator)
    with gateway:
        gateway.wait_ready(timeout_s=60)
        results: list[Any] = []

        def ask(n: int) -> None:
            response = requests.post(
                f"{gateway.url}/v1/ask", json={"question": f"sensor battery {n}?"}, timeout=60
            )
            results.append((response.status_code, response.json()))

        askers = [threading.Thread(target=ask, args=(n,)) for n in range(3)]
        for asker in askers:
            asker.start()
        deadline = time.monotonic() + 10
        while len(fake_retriever.calls_to("/v1/search")) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(fake_retriever.calls_to("/v1/search")) == 3
        gateway.stop(timeout_s=30)  # SIGTERM: gunicorn stops accepting, finishes what it has
        for asker in askers:
            asker.join(timeout=30)
    assert [status for status, _ in results] == [200, 200, 200], results
    assert all(body["answer"] for _, body in results)


def test_a_generator_that_hangs_past_the_deadline_gets_an_extractive_answer_in_budget(
    fake_retriever: FakeRetriever, fake_generator: FakeGenerator, tmp_path: Path
) -> None:
    fake_generator.delay_s["/v1/generate"] = 60.0  # never answers within the budget
    gateway = gateway_process(
        tmp_path, fake_retriever, fake_generator, GENERATOR_READ_TIMEOUT_S="2"
    )
    with gateway:
        gateway.wait_ready(timeout_s=60)
        started = time.monotonic()
        response = requests.post(
            f"{gateway.url}/v1/ask",
            json={"question": "What battery does the sensor take?"},
            timeout=60,
        )
        took = time.monotonic() - started
    body = response.json()
    assert response.status_code == 200, body
    assert body["mode"] == "extractive"
    assert body["degraded"] == ["generator_timeout"]
    # The generator was told the same budget, so it gives up too instead of writing on.
    [call] = fake_generator.calls_to("/v1/generate")
    assert call.body["timeout_s"] < 2
    assert took < 30, took  # bounded by the read timeout, not by the generator's 60 s
