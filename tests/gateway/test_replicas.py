"""RETRIEVER_URL and GENERATOR_URL with several replicas: round robin and failover."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.gateway.conftest import Fake

QUESTION = "How much does Comfort+ cost per month?"


def ask(client: Any) -> dict[str, Any]:
    response = client.post("/v1/ask", json={"question": QUESTION})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_both_replicas_share_the_traffic(
    make_gateway: Callable[..., Flask], make_fake: Callable[[str], Fake]
) -> None:
    retrievers = [make_fake("retriever"), make_fake("retriever")]
    generators = [make_fake("generator"), make_fake("generator")]
    client = make_gateway(
        retriever_url=",".join(f.url for f in retrievers),
        generator_url=" , ".join(f.url for f in generators),
    ).test_client()
    for _ in range(8):
        body = ask(client)
        assert body["mode"] == "generated"
        assert "degraded" not in body
    # Round robin per call: each answer makes two retriever calls (search, then embed for the
    # grounding check) and one generator call; 8 answers split them evenly.
    assert [len(f.calls) for f in retrievers] == [8, 8]
    assert sum(len(f.calls_to("/v1/search")) for f in retrievers) == 8
    assert [len(f.calls_to("/v1/generate")) for f in generators] == [4, 4]


@pytest.mark.parametrize("cooldown_s", [0.0, 60.0])
def test_one_dead_replica_of_each_costs_no_failed_answer(
    make_gateway: Callable[..., Flask],
    make_fake: Callable[[str], Fake],
    closed_url: str,
    cooldown_s: float,
) -> None:
    retriever, generator = make_fake("retriever"), make_fake("generator")
    dead = closed_url
    client = make_gateway(
        retriever_url=f"{dead},{retriever.url}",
        generator_url=f"{generator.url},{dead}",
        replica_cooldown_s=cooldown_s,
    ).test_client()
    for _ in range(6):
        body = ask(client)
        # Not degraded: the live generator replica answered every time.
        assert body["mode"] == "generated", body
        assert "degraded" not in body
    assert len(retriever.calls_to("/v1/search")) == 6
    assert len(generator.calls_to("/v1/generate")) == 6


def test_all_generator_replicas_dead_is_degraded(
    make_gateway: Callable[..., Flask], make_fake: Callable[[str], Fake], closed_url: str
) -> None:
    from qa_common.process import free_port

    other_dead = f"http://127.0.0.1:{free_port()}"
    client = make_gateway(generator_url=f"{closed_url},{other_dead}").test_client()
    body = ask(client)
    assert body["mode"] == "extractive"
    assert body["degraded"] == ["generator_unavailable"]


def test_all_retriever_replicas_dead_is_503(
    make_gateway: Callable[..., Flask], closed_url: str
) -> None:
    from qa_common.process import free_port

    other_dead = f"http://127.0.0.1:{free_port()}"
    client = make_gateway(retriever_url=f"{closed_url},{other_dead}").test_client()
    response = client.post("/v1/ask", json={"question": QUESTION})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "dependency_unavailable"


def test_a_replica_that_answers_with_an_error_is_not_skipped(
    make_gateway: Callable[..., Flask], make_fake: Callable[[str], Fake]
) -> None:
    # Only refused connections move a request to the next replica: a replica that answered
    # 500 may have done the work, so the request fails (502) rather than run twice.
    broken, healthy = make_fake("retriever"), make_fake("retriever")
    broken.fail["/v1/search"] = 500
    for fake in (broken, healthy):
        fake.scores = [0.1]  # no_answer: one retriever call (the search) per question
    client = make_gateway(retriever_url=f"{broken.url},{healthy.url}").test_client()
    statuses = [client.post("/v1/ask", json={"question": QUESTION}).status_code for _ in range(4)]
    assert sorted(statuses) == [200, 200, 502, 502]
    assert len(broken.calls_to("/v1/search")) == 2
