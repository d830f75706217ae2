"""The retriever against a real ``chroma run`` server started by the fixture."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import ChromaServer, assert_error_envelope

# A deadlock on reconnect must fail the test, not hang the suite.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DOCS = [
    {"id": "wifi", "text": "The Halo thermostat only supports 2.4 GHz Wi-Fi networks."},
    {"id": "battery", "text": "The room sensor runs on a CR2477 coin battery."},
    {
        "id": "guides/long.md",
        "text": " ".join(
            f"Step {i}: the furnace setting {i} controls the fan speed for {i % 7 + 1} minutes."
            for i in range(100)
        ),
        "metadata": {"kind": "guide"},
    },
]


@pytest.fixture
def server_client(make_app: Any, chroma_server: ChromaServer) -> Any:
    app = make_app(
        chroma_host="127.0.0.1", chroma_port=chroma_server.port, readiness_interval_s=0.5
    )
    assert "chroma server" in app.extensions["knowledge_base"].store.description
    return app.test_client()


def poll_readyz(client: Any, status: int, timeout_s: float = 30.0) -> Any:
    """Ask /readyz until it answers ``status`` (or the time is up); return the last answer."""
    deadline = time.monotonic() + timeout_s
    response = client.get("/readyz")
    while response.status_code != status and time.monotonic() < deadline:
        time.sleep(0.2)
        response = client.get("/readyz")
    return response


def ingest(client: Any, docs: list[dict[str, Any]]) -> dict[str, Any]:
    response = client.post("/v1/documents", json={"documents": docs})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def search_ids(client: Any, query: str, **options: Any) -> list[str]:
    response = client.post("/v1/search", json={"query": query, **options})
    assert response.status_code == 200, response.get_json()
    return [h["document_id"] for h in response.json["results"]]


def test_ingest_search_delete_and_idempotency(server_client: Any) -> None:
    client = server_client
    assert client.get("/readyz").status_code == 200
    first = ingest(client, DOCS)
    assert first["created"] == 3
    assert first["chunks"] > 3
    second = ingest(client, DOCS)
    assert second["unchanged"] == 3
    assert second["chunks"] == first["chunks"]
    stats = client.get("/v1/stats").get_json()
    assert (stats["documents"], stats["chunks"]) == (3, first["chunks"])
    assert "chroma server" in stats["store"]

    assert search_ids(client, "which coin cell battery", top_k=1) == ["battery"]
    assert set(search_ids(client, "anything", top_k=50, where={"kind": "guide"})) == {
        "guides/long.md"
    }
    shrunk = ingest(client, [{"id": "guides/long.md", "text": "Short now."}])
    assert shrunk["results"][0] == {"id": "guides/long.md", "status": "updated", "chunks": 1}
    assert client.get("/v1/stats").get_json()["chunks"] == 3

    response = client.delete("/v1/documents/guides/long.md")
    assert response.get_json()["deleted_chunks"] == 1
    assert_error_envelope(client.delete("/v1/documents/guides/long.md"), 404)
    assert client.get("/v1/stats").get_json()["documents"] == 2


def test_chroma_down_is_503_and_recovers_without_restart(
    server_client: Any, chroma_server: ChromaServer
) -> None:
    client = server_client
    ingest(client, DOCS[:2])
    assert search_ids(client, "wifi network", top_k=1) == ["wifi"]

    chroma_server.stop()
    assert_error_envelope(
        client.post("/v1/search", json={"query": "wifi"}), 503, "dependency_unavailable"
    )
    assert_error_envelope(client.post("/v1/documents", json={"documents": [{"text": "x"}]}), 503)
    # /readyz answers from a check repeated in the background: it says so within its interval.
    error = assert_error_envelope(poll_readyz(client, 503), 503, "not_ready")
    assert "chroma" in error["message"]
    assert client.get("/healthz").status_code == 200

    chroma_server.start()  # same port, same data directory
    assert poll_readyz(client, 200).status_code == 200
    assert search_ids(client, "wifi network", top_k=1) == ["wifi"]
    assert client.get("/v1/stats").get_json()["documents"] == 2
    assert ingest(client, DOCS[:2])["unchanged"] == 2
