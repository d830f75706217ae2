"""Load shedding under the shipped gunicorn settings: past the bound, 429 at once, no queue."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from qa_common.process import ServiceProcess
from tests.gateway.conftest import FakeGenerator, FakeRetriever

pytestmark = pytest.mark.slow


def test_requests_past_the_bound_are_shed_with_retry_after_not_queued(
    fake_retriever: FakeRetriever, fake_generator: FakeGenerator, tmp_path: Path
) -> None:
    # Every search takes 1.5 s; 4 threads a worker put the bound at 3 requests in flight.
    fake_retriever.delay_s["/v1/search"] = 1.5
    gateway = ServiceProcess(
        "gateway",
        env={
            "RETRIEVER_URL": fake_retriever.url,
            "GENERATOR_URL": fake_generator.url,
            "GATEWAY_WORKERS": "1",
            "GATEWAY_THREADS": "4",
            "LOG_LEVEL": "WARNING",
        },
        log_path=tmp_path / "gateway.log",
    )
    with gateway:
        gateway.wait_ready(timeout_s=60)

        def ask(n: int) -> tuple[int, str | None]:
            response = requests.post(
                f"{gateway.url}/v1/ask", json={"question": f"battery {n}?"}, timeout=60
            )
            return response.status_code, response.headers.get("Retry-After")

        with ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(ask, range(12)))
    statuses = [status for status, _ in results]
    # Queued instead (the old bound of 32 above 4 threads), all twelve would wait and pass.
    assert statuses.count(200) >= 2, statuses
    assert statuses.count(429) >= 6, statuses
    assert set(statuses) <= {200, 429}, statuses
    assert all(int(after or 0) >= 1 for status, after in results if status == 429), results
