"""Fixtures for the gateway tests.

Unit tests run the real gateway (Flask test client on ``create_app``) against fake downstream
services that are real HTTP servers on 127.0.0.1: the gateway's own clients, timeouts, retries
and replica failover are exercised for real. Each fake records what it received and can be
programmed per test (scores, answers, delays, error statuses, streamed tokens).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request, stream_with_context

from gateway.app import create_app
from gateway.config import GatewayConfig
from qa_common.process import free_port
from tests.conftest import serve_app
from tests.stack import ADMIN_KEY, INTERNAL_KEY, Stack, running_stack

# Snippets in the shape the retriever stores FAQ rows: the question line, then the answer.
CORPUS: list[dict[str, Any]] = [
    {
        "chunk_id": "faq-001#0",
        "document_id": "faq-001",
        "text": "How much does the Comfort+ plan cost?\nComfort+ costs $3.49 per month, or $34 "
        "per year if you pay annually. Paying yearly works out to roughly 19% less than twelve "
        "monthly payments.",
        "metadata": {"question": "How much does the Comfort+ plan cost?", "category": "pricing"},
    },
    {
        "chunk_id": "faq-016#0",
        "document_id": "faq-016",
        "text": "What battery does the Room Sensor use and how long does it last?\nThe Room "
        "Sensor runs on one CR2477 coin cell battery, which typically lasts about 3 years. The "
        "app warns you when the battery drops below 15%.",
        "metadata": {"question": "What battery does the Room Sensor use?", "category": "hardware"},
    },
    {
        "chunk_id": "faq-017#0",
        "document_id": "faq-017",
        "text": "What colors does Halo come in?\nThe standard Halo comes in Chalk, Slate, and "
        "Sage. Halo Pro is available in those three colors plus a Brushed Brass finish.",
        "metadata": {"question": "What colors does Halo come in?", "category": "hardware"},
    },
]
DIMENSION = 256
_TOKEN = re.compile(r"[a-z0-9$%+.]+")


def fake_embed(text: str) -> list[float]:
    """Deterministic bag-of-words embedding: each word hashed to one axis, normalized."""
    vector = [0.0] * DIMENSION
    for word in _TOKEN.findall(text.lower()):
        word = word.strip(".")
        if word:
            digest = hashlib.md5(word.encode(), usedforsecurity=False).digest()
            vector[int.from_bytes(digest[:4], "big") % DIMENSION] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0:
        vector[0] = 1.0
        return vector
    return [v / norm for v in vector]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def first_statement(text: str) -> str:
    """The first line-level sentence of a snippet that is not its FAQ question."""
    for line in text.splitlines():
        if line.strip() and not line.strip().endswith("?"):
            return re.split(r"(?<=\.)\s+", line.strip())[0]
    return text


@dataclass
class Call:
    method: str
    path: str
    body: Any
    headers: dict[str, str]


@dataclass
class Fake:
    """State shared by both fakes: what they received and how they should fail."""

    name: str
    calls: list[Call] = field(default_factory=list)
    # Per path: an HTTP status to fail with (with the error envelope), or None to answer.
    fail: dict[str, int] = field(default_factory=dict)
    # Per path: seconds to sleep before answering (cut short when the fixture stops the fake).
    delay_s: dict[str, float] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self) -> None:
        with self.lock:
            self.calls.append(
                Call(
                    request.method,
                    request.path,
                    request.get_json(silent=True),
                    dict(request.headers),
                )
            )

    def calls_to(self, path: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.path == path]

    def misbehave(self, path: str) -> Response | None:
        """Sleep and/or fail as programmed for this path; None means answer normally."""
        delay = self.delay_s.get(path)
        if delay:
            self.release.wait(delay)
        status = self.fail.get(path)
        if status is None:
            return None
        response = jsonify(
            error={
                "code": f"{self.name}_failed_{status}",
                "message": f"the fake {self.name} was told to answer {status}",
                "request_id": request.headers.get("X-Request-ID"),
            }
        )
        response.status_code = status
        if status in (429, 503):
            response.headers["Retry-After"] = "1"
        return response


@dataclass
class FakeRetriever(Fake):
    corpus: list[dict[str, Any]] = field(default_factory=lambda: [dict(c) for c in CORPUS])
    # Scores given to the ranked results, best first; None: the fake embedding's cosine.
    scores: list[float] | None = field(default_factory=lambda: [0.8, 0.6, 0.5])
    documents_response: dict[str, Any] = field(
        default_factory=lambda: {"documents": 1, "chunks": 2}
    )
    known_documents: set[str] = field(default_factory=set)

    def search(self, query: str, top_k: int) -> list[dict[str, Any]]:
        q = fake_embed(query)
        ranked = sorted(
            self.corpus, key=lambda c: (-cosine(q, fake_embed(c["text"])), c["chunk_id"])
        )[:top_k]
        results = []
        for rank, chunk in enumerate(ranked):
            if self.scores is None:
                score = cosine(q, fake_embed(chunk["text"]))
            elif rank < len(self.scores):
                score = self.scores[rank]
            else:
                score = self.scores[-1] / (rank + 1)
            results.append({**chunk, "score": score})
        return results


@dataclass
class FakeGenerator(Fake):
    # The answer: a fixed text, or a function of the request body. Default: echo the first
    # statement of the first snippet, which the snippets obviously support.
    answer: str | Callable[[dict[str, Any]], str] | None = None
    # Streaming: after this many tokens, send an `error` event instead of continuing.
    stream_error_after: int | None = None
    # Streaming: after this many tokens, stall (past the gateway's read timeout).
    stream_stall_after: int | None = None
    stall_s: float = 5.0
    # Streaming: after this many tokens, break off (the server raises; the body is cut short).
    stream_abort_after: int | None = None

    def text_for(self, body: dict[str, Any]) -> str:
        if callable(self.answer):
            return self.answer(body)
        if self.answer is not None:
            return self.answer
        snippets = body.get("snippets") or []
        return first_statement(snippets[0]) if snippets else "No snippets were given."


def _retriever_app(fake: FakeRetriever) -> Flask:
    app = Flask("fake_retriever")

    @app.before_request
    def _record() -> Response | None:
        fake.record()
        return fake.misbehave(request.path)

    @app.get("/readyz")
    def readyz() -> Any:
        return jsonify(status="ready")

    @app.post("/v1/search")
    def search() -> Any:
        body = request.get_json()
        return jsonify(results=fake.search(body["query"], body.get("top_k", 5)), took_ms=1.0)

    @app.post("/v1/embed")
    def embed() -> Any:
        texts = request.get_json()["texts"]
        return jsonify(embeddings=[fake_embed(t) for t in texts], dimension=DIMENSION)

    @app.post("/v1/documents")
    def documents() -> Any:
        return jsonify(fake.documents_response)

    @app.delete("/v1/documents/<path:document_id>")
    def delete(document_id: str) -> Any:
        if document_id not in fake.known_documents:
            response = jsonify(
                error={
                    "code": "document_not_found",
                    "message": f"No document {document_id!r}.",
                    "request_id": request.headers.get("X-Request-ID"),
                }
            )
            response.status_code = 404
            return response
        return jsonify(deleted_chunks=3, id=document_id)

    return app


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _generator_app(fake: FakeGenerator) -> Flask:
    app = Flask("fake_generator")

    @app.before_request
    def _record() -> Response | None:
        fake.record()
        return fake.misbehave(request.path)

    @app.get("/readyz")
    def readyz() -> Any:
        return jsonify(status="ready", model="fake")

    @app.post("/v1/generate")
    def generate() -> Any:
        body = request.get_json()
        text = fake.text_for(body)
        if not body.get("stream"):
            return jsonify(
                answer=text, model="fake", prompt_tokens=10, completion_tokens=5, took_ms=1.0
            )
        tokens = re.findall(r"\S+\s*", text)

        def events() -> Iterator[str]:
            for i, token in enumerate(tokens):
                if fake.stream_error_after is not None and i == fake.stream_error_after:
                    yield _sse(
                        "error",
                        {"error": {"code": "generation_failed", "message": "the model fell over"}},
                    )
                    return
                if fake.stream_abort_after is not None and i == fake.stream_abort_after:
                    raise RuntimeError("the fake generator breaks off mid-stream")
                if fake.stream_stall_after is not None and i == fake.stream_stall_after:
                    fake.release.wait(fake.stall_s)
                    return
                yield _sse("token", {"text": token})
            yield _sse(
                "done",
                {"answer": text, "model": "fake", "prompt_tokens": 10, "completion_tokens": 5},
            )

        return Response(stream_with_context(events()), mimetype="text/event-stream")

    return app


@contextlib.contextmanager
def running(fake: Fake, app: Flask) -> Iterator[Fake]:
    with serve_app(app) as url:
        fake.url = url
        try:
            yield fake
        finally:
            fake.release.set()  # cut every programmed sleep short so the server can stop


@pytest.fixture
def fake_retriever() -> Iterator[FakeRetriever]:
    fake = FakeRetriever("retriever")
    with running(fake, _retriever_app(fake)):
        yield fake


@pytest.fixture
def fake_generator() -> Iterator[FakeGenerator]:
    fake = FakeGenerator("generator")
    with running(fake, _generator_app(fake)):
        yield fake


@pytest.fixture
def make_fake() -> Iterator[Callable[[str], Fake]]:
    """Start extra fakes (e.g. second replicas): ``make_fake("retriever")``."""
    stack = contextlib.ExitStack()

    def make(kind: str) -> Fake:
        if kind == "retriever":
            fake: Fake = FakeRetriever("retriever")
            return stack.enter_context(running(fake, _retriever_app(fake)))
        fake = FakeGenerator("generator")
        return stack.enter_context(running(fake, _generator_app(fake)))

    with stack:
        yield make


@pytest.fixture
def closed_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(autouse=True)
def _clean_gateway_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Settings from the caller's shell must not leak into the tests' configs.
    for name in GatewayConfig.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def make_gateway(
    fake_retriever: FakeRetriever, fake_generator: FakeGenerator
) -> Iterator[Callable[..., Flask]]:
    """Build the real gateway app on the fakes; keyword arguments override its config."""
    apps: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        # Settings ignore unknown names: a renamed setting would silently test nothing.
        unknown = set(overrides) - set(GatewayConfig.model_fields)
        assert not unknown, f"GatewayConfig has no setting {sorted(unknown)}"
        overrides.setdefault("retriever_url", fake_retriever.url)
        overrides.setdefault("generator_url", fake_generator.url)
        app = create_app(GatewayConfig(**overrides))
        app.testing = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        answerer = app.extensions["answerer"]
        answerer.retriever.close()
        answerer.generator.close()


@pytest.fixture
def gateway(make_gateway: Callable[..., Flask]) -> Any:
    """A test client on the gateway with its default settings, on the fakes."""
    return make_gateway().test_client()


def parse_events(text: str) -> list[tuple[str, Any]]:
    """Parse a text/event-stream body into (event, data) pairs."""
    events = []
    for block in text.split("\n\n"):
        name, data = "message", []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, json.loads("\n".join(data))))
    return events


# -- the real services, under gunicorn (slow tests) -------------------------------------------


# The stack is the one tests/e2e runs on (tests/stack.py): one retriever on embedded Chroma, one
# generator, the gateway; the services require the internal key between themselves.
LiveStack = Stack
LIVE_ADMIN_KEY = ADMIN_KEY
LIVE_INTERNAL_KEY = INTERNAL_KEY


@pytest.fixture(scope="session")
def gateway_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT-2 with a tokenizer trained on data/, built by the project's code."""
    from generator_service.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("gateway-tiny-generator") / "model")


@pytest.fixture(scope="session")
def live_stack(
    tmp_path_factory: pytest.TempPathFactory, gateway_tiny_model_dir: Path
) -> Iterator[LiveStack]:
    """All three services under gunicorn on free ports, data/ ingested; shared by the slow
    tests (a test that kills the generator starts it again)."""
    with running_stack(tmp_path_factory.mktemp("gateway-live"), gateway_tiny_model_dir) as stack:
        yield stack


@pytest.fixture(scope="session")
def real_model_stack(
    tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path
) -> Iterator[LiveStack]:
    """The live stack with the real bundled SmolLM2-135M-Instruct writing the answers."""
    with running_stack(
        tmp_path_factory.mktemp("gateway-real-model"),
        "smollm2-135m-instruct",
        generator_env={"GENERATOR_MAX_NEW_TOKENS": "64", "GENERATOR_TORCH_THREADS": "2"},
    ) as stack:
        yield stack
