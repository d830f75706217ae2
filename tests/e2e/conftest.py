"""The whole system as users run it: real gunicorn processes on 127.0.0.1, nothing faked.

A stack is the retriever (all-MiniLM-L6-v2), the generator (the tiny GPT-2 the project builds),
and the gateway in front of them, with ``data/`` ingested by the ingestion CLI. It comes in two
shapes, and every test in ``tests/e2e`` runs against both:

- ``embedded``: one retriever on an embedded ChromaDB directory (embedded Chroma belongs to one
  process), two generator replicas;
- ``server``: a real ``chroma run`` server shared by two retriever replicas, two generator
  replicas.

The gateway gets every replica in ``RETRIEVER_URL`` / ``GENERATOR_URL`` (comma separated), as a
user scaling by hand would. Stacks are module scoped: each shape starts once per module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import GatewayConfig
from generator_service.config import GeneratorConfig
from qa_common.process import ServiceProcess
from retriever_service.config import RetrieverConfig
from tests.conftest import DATA_DIR, REPO_ROOT, ChromaServer

ADMIN_KEY = "e2e-admin-key-7f1a"
READY_TIMEOUT_S = 180.0

# Variables of the caller's shell that would change how the services under test behave.
_SERVICE_ENV = (
    {
        name.upper()
        for cls in (GatewayConfig, RetrieverConfig, GeneratorConfig)
        for name in cls.model_fields
    }
    | {
        f"{prefix}_{suffix}"
        for prefix in ("GATEWAY", "RETRIEVER", "GENERATOR")
        for suffix in ("BIND", "WORKERS", "THREADS", "TIMEOUT_S", "WORKER_TIMEOUT_S")
    }
    | {"PROMETHEUS_MULTIPROC_DIR"}
)


class Stack:
    """Chroma (server shape only), retriever and generator replicas, and the gateway."""

    def __init__(self, shape: str, root: Path, tiny_model_dir: Path) -> None:
        assert shape in ("embedded", "server")
        self.shape = shape
        self.root = root
        self.tiny_model_dir = tiny_model_dir
        self.chroma: ChromaServer | None = None
        if shape == "server":
            self.chroma = ChromaServer(root / "chroma-server", root / "chroma-server.log")
        n_retrievers = 2 if shape == "server" else 1
        self.retrievers = [self._retriever(i) for i in range(n_retrievers)]
        self.generators = [self._generator(i) for i in range(2)]
        self.gateway: ServiceProcess | None = None
        self.first_ingest: dict[str, int] = {}

    # -- the processes --------------------------------------------------------------------------

    def _retriever(self, index: int, port: int | None = None) -> ServiceProcess:
        env = {
            "HF_HUB_OFFLINE": "1",
            "RETRIEVER_THREADS": "8",
            "LOG_LEVEL": "WARNING",
        }
        if self.chroma is not None:
            env |= {"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(self.chroma.port)}
        else:
            env["CHROMA_PATH"] = str(self.root / "chroma")
        return ServiceProcess(
            "retriever_service", port=port, env=env, log_path=self.root / f"retriever-{index}.log"
        )

    def _generator(self, index: int, port: int | None = None) -> ServiceProcess:
        env = {
            "GENERATOR_MODEL": str(self.tiny_model_dir),
            "GENERATOR_TORCH_THREADS": "1",
            "GENERATOR_MAX_NEW_TOKENS": "16",
            "GENERATOR_THREADS": "16",
            "HF_HUB_OFFLINE": "1",
            "LOG_LEVEL": "WARNING",
        }
        return ServiceProcess(
            "generator_service", port=port, env=env, log_path=self.root / f"generator-{index}.log"
        )

    def start(self) -> None:
        if self.chroma is not None:
            self.chroma.start()
        for service in (*self.retrievers, *self.generators):
            service.start()
        for service in self.retrievers:
            service.wait_ready(timeout_s=READY_TIMEOUT_S)
        self.first_ingest = self.ingest()
        for service in self.generators:
            service.wait_ready(timeout_s=READY_TIMEOUT_S)
        self.gateway = ServiceProcess(
            "gateway",
            env={
                "RETRIEVER_URL": ",".join(r.url for r in self.retrievers),
                "GENERATOR_URL": ",".join(g.url for g in self.generators),
                # A replica that refused a connection is tried again after a second.
                "REPLICA_COOLDOWN_S": "1",
                "GENERATOR_READ_TIMEOUT_S": "60",
                "ADMIN_API_KEY": ADMIN_KEY,
                "GATEWAY_WORKERS": "2",
                "LOG_LEVEL": "INFO",
            },
            log_path=self.root / "gateway.log",
        ).start()
        self.gateway.wait_ready(timeout_s=60)

    def restart_retrievers(self, *, with_store: bool) -> None:
        """Stop every retriever (and the Chroma server) and start them again on the same ports."""
        for service in self.retrievers:
            service.stop()
        if with_store and self.chroma is not None:
            self.chroma.stop()
            self.chroma.start()  # same port, same data directory
        self.retrievers = [
            self._retriever(i, port=old.port).start() for i, old in enumerate(self.retrievers)
        ]
        for service in self.retrievers:
            service.wait_ready(timeout_s=READY_TIMEOUT_S)

    def kill_generators(self) -> None:
        for service in self.generators:
            service.kill()
            service.stop()  # closes its log file

    def restart_generators(self) -> None:
        """Start every dead generator again on its old port."""
        for i, old in enumerate(self.generators):
            if old.process is None or old.process.poll() is not None:
                self.generators[i] = self._generator(i, port=old.port).start()
        for service in self.generators:
            service.wait_ready(timeout_s=READY_TIMEOUT_S)

    def stop(self) -> None:
        for service in (self.gateway, *self.generators, *self.retrievers):
            if service is not None:
                try:
                    service.stop()
                except Exception as exc:  # keep stopping the others
                    print(f"stopping {service.package} failed: {exc!r}")
        if self.chroma is not None:
            self.chroma.stop()

    # -- using it -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self.gateway is not None
        return self.gateway.url

    def ingest(self) -> dict[str, int]:
        """Run the ingestion CLI on data/ against the first retriever; return its counts."""
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "retriever_service.ingest",
                str(DATA_DIR),
                "--url",
                self.retrievers[0].url,
                "--quiet",
            ],
            cwd=REPO_ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        counts = {
            key: int(value)
            for key, value in re.findall(
                r"^\s*(documents|created|updated|unchanged|failed|chunks written):\s+(\d+)",
                result.stdout,
                re.MULTILINE,
            )
        }
        assert {"documents", "created", "unchanged", "failed"} <= set(counts), result.stdout
        return counts

    def stats(self, retriever: ServiceProcess | None = None) -> dict[str, Any]:
        service = retriever or self.retrievers[0]
        response = requests.get(f"{service.url}/v1/stats", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def logs(self) -> str:
        parts = []
        if self.chroma is not None:
            parts.append(f"--- chroma ---\n{self.chroma.tail()}")
        for service in (*self.retrievers, *self.generators, self.gateway):
            if service is not None:
                parts.append(f"--- {service.package} {service.url} ---\n{service.log_tail(30)}")
        return "\n".join(parts)


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
    with pytest.MonkeyPatch.context() as patch:
        for name in _SERVICE_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("ANONYMIZED_TELEMETRY", "False")
        built = Stack(
            request.param, tmp_path_factory.mktemp(f"e2e-{request.param}"), e2e_tiny_model_dir
        )
        try:
            built.start()
            yield built
        except BaseException:
            print(built.logs())
            raise
        finally:
            built.stop()
