"""The whole system as users run it, in two shapes; every test in ``tests/e2e`` runs on both.

- ``embedded``: one retriever on an embedded ChromaDB directory (embedded Chroma belongs to one
  process), two generator replicas;
- ``server``: a real ``chroma run`` server shared by two retriever replicas, two generator
  replicas.

The stack itself (real gunicorn processes, ``data/`` ingested) is ``tests/stack.py``, shared
with the gateway's slow tests. Stacks are module scoped: each shape starts once per module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from qa_common.process import ServiceProcess
from tests.stack import ADMIN_KEY, INTERNAL_KEY, Stack, running_stack

__all__ = ["ADMIN_KEY", "INTERNAL_KEY", "Stack"]


def requests_served(service: ServiceProcess, endpoint: str) -> float:
    """How many requests a service has answered on one Flask endpoint (from its /metrics)."""
    response = requests.get(f"{service.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.labels.get("endpoint") == endpoint:
                total += sample.value
    return total


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.5) -> Any:
    """Call ``predicate`` until it returns something truthy; return that, or None at the end."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


@pytest.fixture(scope="session")
def e2e_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random GPT-2 (tokenizer trained on data/), built once by the project's code."""
    from generator_service.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("e2e-tiny-generator") / "model")


@pytest.fixture(scope="module", params=["embedded", "server"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    e2e_tiny_model_dir: Path,
) -> Iterator[Stack]:
    """A running stack of the given shape, data/ ingested; every process stopped afterwards."""
    with running_stack(
        tmp_path_factory.mktemp(f"e2e-{request.param}"),
        e2e_tiny_model_dir,
        shape=request.param,
        generators=2,
        generator_env={"GENERATOR_MAX_NEW_TOKENS": "16"},
    ) as built:
        yield built
