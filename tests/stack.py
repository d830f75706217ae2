"""The whole system as users run it, for every test that needs it: real gunicorn processes.

A ``Stack`` is the retriever (all-MiniLM-L6-v2; one on an embedded ChromaDB directory, or
several sharing a real ``chroma run`` server), generator replicas (the tiny GPT-2 the project
builds, or the bundled SmolLM2) and the gateway in front of them, with ``data/`` ingested by
the ingestion CLI. The services require ``INTERNAL_API_KEY`` between themselves, as deployed.
The gateway gets every replica in ``RETRIEVER_URL`` / ``GENERATOR_URL``, as a user scaling by
hand would. ``tests/e2e`` and ``tests/gateway`` build their fixtures on it.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway.config import GatewayConfig
from generator_service.config import GeneratorConfig
from qa_common.process import ServiceProcess
from retriever_service.config import RetrieverConfig
from tests.conftest import DATA_DIR, REPO_ROOT, ChromaServer

READY_TIMEOUT_S = 180.0
ADMIN_KEY = "stack-admin-key-3c4d"
# The retriever and the generator answer only with this key.
INTERNAL_KEY = "stack-internal-key-8e1f"

# Variables of the caller's shell that would change how the services under test behave.
SERVICE_ENV = (
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

    def __init__(
        self,
        root: Path,
        model: Path | str,
        *,
        shape: str = "embedded",
        generators: int = 1,
        generator_env: Mapping[str, str] | None = None,
    ) -> None:
        assert shape in ("embedded", "server")
        self.shape = shape
        self.root = root
        self.chroma: ChromaServer | None = None
        if shape == "server":
            self.chroma = ChromaServer(root / "chroma-server", root / "chroma-server.log")
        self.generator_env = {
            "GENERATOR_MODEL": str(model),
            "GENERATOR_TORCH_THREADS": "1",
            "GENERATOR_MAX_NEW_TOKENS": "24",
            "GENERATOR_THREADS": "16",
            "HF_HUB_OFFLINE": "1",
            "INTERNAL_API_KEY": INTERNAL_KEY,
            # INFO, as shipped: the tests read what a deployment would log.
            "LOG_LEVEL": "INFO",
            **(generator_env or {}),
        }
        # Embedded Chroma belongs to one process: one retriever; a server is shared by two.
        self.retrievers = [self._retriever(i) for i in range(2 if shape == "server" else 1)]
        self.generators = [self._generator(i) for i in range(generators)]
        self.gateway: ServiceProcess | None = None
        self.first_ingest: dict[str, int] = {}

    # -- the processes --------------------------------------------------------------------------

    def _retriever(self, index: int, port: int | None = None) -> ServiceProcess:
        env = {
            "HF_HUB_OFFLINE": "1",
            "INTERNAL_API_KEY": INTERNAL_KEY,
            "RETRIEVER_THREADS": "8",
            "LOG_LEVEL": "INFO",
        }
        if self.chroma is not None:
            env |= {"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(self.chroma.port)}
        else:
            env["CHROMA_PATH"] = str(self.root / "chroma")
        return ServiceProcess(
            "retriever_service", port=port, env=env, log_path=self.root / f"retriever-{index}.log"
        )

    def _generator(self, index: int, port: int | None = None) -> ServiceProcess:
        return ServiceProcess(
            "generator_service",
            port=port,
            env=self.generator_env,
            log_path=self.root / f"generator-{index}.log",
        )

    def start(self) -> None:
        if self.chroma is not None:
            self.chroma.start()
        for service in (*self.retrievers, *self.generators):
            service.start()
        for service in self.retrievers:
            service.wait_ready(timeout_s=READY_TIMEOUT_S)
        self.first_ingest = self.ingest()
        stats = self.stats()
        assert stats["documents"] >= 50, stats
        assert stats["chunks"] >= stats["documents"], stats
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
                "INTERNAL_API_KEY": INTERNAL_KEY,
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

    @property
    def retriever(self) -> ServiceProcess:
        return self.retrievers[0]

    @property
    def generator(self) -> ServiceProcess:
        return self.generators[0]

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
            env={**os.environ, "HF_HUB_OFFLINE": "1", "INTERNAL_API_KEY": INTERNAL_KEY},
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
        response = requests.get(
            f"{service.url}/v1/stats",
            headers={"Authorization": f"Bearer {INTERNAL_KEY}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return response.json()

    @contextlib.contextmanager
    def document(self, document_id: str, text: str) -> Iterator[None]:
        """Store one document through the gateway for the block's time, then delete it."""
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        added = requests.post(
            f"{self.url}/v1/documents",
            json={"documents": [{"id": document_id, "text": text}]},
            headers=admin,
            timeout=60,
        )
        assert added.status_code == 200, added.text
        try:
            yield
        finally:
            requests.delete(f"{self.url}/v1/documents/{document_id}", headers=admin, timeout=60)

    def logs(self) -> str:
        parts = []
        if self.chroma is not None:
            parts.append(f"--- chroma ---\n{self.chroma.tail()}")
        for service in (*self.retrievers, *self.generators, self.gateway):
            if service is not None:
                parts.append(f"--- {service.package} {service.url} ---\n{service.log_tail(30)}")
        return "\n".join(parts)


@contextlib.contextmanager
def running_stack(root: Path, model: Path | str, **options: Any) -> Iterator[Stack]:
    """Start a stack in a clean environment; print its logs if anything fails; stop it."""
    with pytest.MonkeyPatch.context() as patch:
        for name in SERVICE_ENV:
            patch.delenv(name, raising=False)
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("ANONYMIZED_TELEMETRY", "False")
        stack = Stack(root, model, **options)
        try:
            stack.start()
            yield stack
        except BaseException:
            print(stack.logs())
            raise
        finally:
            stack.stop()
