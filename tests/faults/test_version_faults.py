"""Documents stay whole under SIGKILL and under replicas writing the same ids at once.

Real gunicorn retrievers on 127.0.0.1: one on an embedded Chroma directory killed at random
points of a long ingest, and two on one real ``chroma run`` server racing on a few ids. What a
reader sees is checked against the real chunker: every document is exactly one version, whole.
"""

from __future__ import annotations

import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from qa_common.process import ServiceProcess
from retriever_service.chunking import Chunker
from retriever_service.store import ChromaStore, CollectionSpec
from retriever_service.versions import current_versions, parse_chunk_id
from tests.conftest import ChromaServer

pytestmark = pytest.mark.slow
KEY = "version-faults-key"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TAG = re.compile(r"\btag(\w+)\b")


def document_text(tag: str, sentences: int) -> str:
    return " ".join(
        f"tag{tag} sentence {k}: the damper setting {k} keeps the vent at {k % 7 + 1} turns."
        for k in range(sentences)
    )


def expected_chunks(embedder: Any, text: str) -> int:
    """How many chunks the retriever makes of ``text``, by the same chunker and settings."""
    return len(Chunker(embedder.token_spans, embedder.max_tokens, 32).split(text))


def retriever_process(tmp_path: Path, name: str, env: dict[str, str]) -> ServiceProcess:
    return ServiceProcess(
        "retriever_service",
        env={
            "INTERNAL_API_KEY": KEY,
            "HF_HUB_OFFLINE": "1",
            "LOG_LEVEL": "WARNING",
            "RETRIEVER_WORKERS": "1",
            **env,
        },
        log_path=tmp_path / f"{name}.log",
    )


def read_document(url: str, document_id: str) -> list[str] | None:
    response = requests.get(f"{url}/v1/documents/{document_id}", headers=HEADERS, timeout=60)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["chunk_texts"]


def single_tag(texts: list[str]) -> str:
    tags = {t for text in texts for t in TAG.findall(text)}
    assert len(tags) == 1, f"chunks of several versions: {sorted(tags)}"
    return tags.pop()


def searched_tags(url: str, query: str) -> dict[str, set[str]]:
    """Each document's tags among the chunks a hybrid and a dense search return.

    Within one answer a document has one tag; across the two searches, a write may fall between.
    """
    seen: dict[str, set[str]] = {}
    for mode in ("hybrid", "dense"):
        response = requests.post(
            f"{url}/v1/search",
            json={"query": query, "top_k": 50, "mode": mode},
            headers=HEADERS,
            timeout=60,
        )
        assert response.status_code == 200, response.text
        answer: dict[str, set[str]] = {}
        for hit in response.json()["results"]:
            answer.setdefault(hit["document_id"], set()).update(TAG.findall(hit["text"]))
        for document_id, tags in answer.items():
            assert len(tags) == 1, f"{mode} search mixed versions of {document_id}: {tags}"
            seen.setdefault(document_id, set()).update(tags)
    return seen


# -- SIGKILL during a long ingest -------------------------------------------------------------


def test_sigkill_at_random_points_of_a_long_ingest_never_leaves_a_mixed_document(
    tmp_path: Path, embedder: Any
) -> None:
    chroma_path = tmp_path / "chroma"
    documents = [f"doc-{i}" for i in range(12)]
    # Each round rewrites every document with a new tag and a new length (so a new chunk count).
    texts = {
        (d, r): document_text(f"r{r}{d.replace('-', '')}", 60 + 9 * r + 3 * i)
        for i, d in enumerate(documents)
        for r in range(5)
    }
    chunk_counts = {key: expected_chunks(embedder, text) for key, text in texts.items()}
    rng = random.Random(12)  # noqa: S311 - a reproducible schedule, not a secret
    # A short grace, so that the test can wait it out: writes must commit within half of it.
    grace_s = 10.0
    env = {"CHROMA_PATH": str(chroma_path), "ORPHAN_GRACE_S": str(grace_s), "LOG_LEVEL": "INFO"}

    acknowledged = threading.Event()

    def ingest_round(url: str, round_: int) -> None:
        for first in range(0, len(documents), 3):
            batch = [{"id": d, "text": texts[(d, round_)]} for d in documents[first : first + 3]]
            response = requests.post(
                f"{url}/v1/documents", json={"documents": batch}, headers=HEADERS, timeout=120
            )
            assert response.status_code == 200, response.text
            acknowledged.set()

    def check_whole(url: str, rounds_started: int) -> dict[str, int]:
        """Every document is one whole version of some round; return each one's round."""
        state: dict[str, int] = {}
        for document_id in documents:
            chunks = read_document(url, document_id)
            if chunks is None:
                continue
            tag = single_tag(chunks)
            round_ = int(tag[1])
            assert round_ < rounds_started
            text = texts[(document_id, round_)]
            assert len(chunks) == chunk_counts[(document_id, round_)], document_id
            assert text.startswith(chunks[0])
            assert text.endswith(chunks[-1])
            state[document_id] = round_
        for document_id, tags in searched_tags(url, "damper setting vent turns").items():
            assert tags == {f"r{state[document_id]}{document_id.replace('-', '')}"}
        return state

    states = []
    for round_ in range(4):
        retriever = retriever_process(tmp_path, f"round-{round_}", env)
        with retriever:
            retriever.wait_ready(timeout_s=180)
            _wait_for_log(retriever, "sweep done")
            states.append(check_whole(retriever.url, round_))
            sender = threading.Thread(
                target=_ignore_errors, args=(ingest_round, retriever.url, round_), daemon=True
            )
            acknowledged.clear()
            sender.start()
            # Somewhere in the rest of the ingest, once its first request is acknowledged.
            assert acknowledged.wait(timeout=120)
            time.sleep(rng.uniform(0.0, 1.5))
            retriever.kill()
            sender.join(timeout=60)

    retriever = retriever_process(tmp_path, "final", env)
    with retriever:
        retriever.wait_ready(timeout_s=180)
        _wait_for_log(retriever, "sweep done")
        states.append(check_whole(retriever.url, 4))
        print("rounds each document was at after each kill:", states[1:])
        # The kills landed mid-ingest: some documents had the killed round's version, some not.
        assert any(
            0 < sum(r == k for r in s.values()) < len(documents) for k, s in enumerate(states[1:])
        )
        # Re-running the last round's ingest completes it.
        ingest_round(retriever.url, 3)
        assert check_whole(retriever.url, 4) == dict.fromkeys(documents, 3)
    # Once what the kills left is older than the grace, a start-up sweep removes all of it.
    time.sleep(grace_s)
    retriever = retriever_process(tmp_path, "sweeper", env)
    with retriever:
        retriever.wait_ready(timeout_s=180)
        _wait_for_log(retriever, "sweep done")
        assert check_whole(retriever.url, 4) == dict.fromkeys(documents, 3)

    # Nothing is left that no reader sees: the start-up sweeps removed every killed write.
    store = ChromaStore(
        CollectionSpec(embedding_model=embedder.model_name, dimension=embedder.dimension),
        path=str(chroma_path),
    )
    stored = [c.id for c in store.get("documents", where={"_position": {"$gte": 0}})]
    current = current_versions(store.all_versions("documents"))
    assert len(stored) == sum(chunk_counts[(d, 3)] for d in documents)
    assert {parse_chunk_id(c) for c in stored} == {(d, r.version) for d, r in current.items()}


def _ignore_errors(function: Any, *args: Any) -> None:
    # The server is killed under it.
    try:
        function(*args)
    except (requests.RequestException, AssertionError) as exc:
        print(f"ingest stopped: {type(exc).__name__}: {str(exc)[:300]}")


def _wait_for_log(service: ServiceProcess, text: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in service.log_tail(200):
        assert time.monotonic() < deadline, f"never logged {text!r}: {service.log_tail()}"
        time.sleep(0.3)


# -- two replicas racing on the same ids ------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    document_id: str
    kind: str  # "write" or "delete"
    tag: str
    started: float
    ended: float
    status: int


def test_two_replicas_writing_and_deleting_the_same_ids_keep_the_last_acknowledged(
    tmp_path: Path, embedder: Any, chroma_server: ChromaServer
) -> None:
    env = {"CHROMA_HOST": "127.0.0.1", "CHROMA_PORT": str(chroma_server.port)}
    replicas = [retriever_process(tmp_path, f"replica-{n}", env) for n in range(2)]
    documents = ["race-a", "race-b", "race-c"]
    texts: dict[str, str] = {}
    operations: list[Operation] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        rng = random.Random(worker)  # noqa: S311 - a reproducible schedule
        for step in range(14):
            document_id = rng.choice(documents)
            url = rng.choice(replicas).url
            tag = f"w{worker}s{step}"
            started = time.monotonic()
            if rng.random() < 0.25:
                kind = "delete"
                response = requests.delete(
                    f"{url}/v1/documents/{document_id}", headers=HEADERS, timeout=120
                )
            else:
                kind = "write"
                text = document_text(tag, rng.randint(3, 40))
                with lock:
                    texts[tag] = text
                response = requests.post(
                    f"{url}/v1/documents",
                    json={"documents": [{"id": document_id, "text": text}]},
                    headers=HEADERS,
                    timeout=120,
                )
            ended = time.monotonic()
            with lock:
                operations.append(
                    Operation(document_id, kind, tag, started, ended, response.status_code)
                )

    writing = threading.Event()
    reads: list[int] = []

    def reader() -> None:
        """Read while the writes go on: every answer is one whole version."""
        rng = random.Random(99)  # noqa: S311 - a reproducible schedule
        while writing.is_set():
            url = rng.choice(replicas).url
            document_id = rng.choice(documents)
            chunks = read_document(url, document_id)
            if chunks is not None:
                tag = single_tag(chunks)
                with lock:
                    text = texts[tag]
                assert len(chunks) == expected_chunks(embedder, text), (document_id, tag)
                assert text.startswith(chunks[0])
                assert text.endswith(chunks[-1])
            searched_tags(url, "damper setting vent")  # checks each answer on its own
            reads.append(1)

    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_ready(timeout_s=180)
        writing.set()
        with ThreadPoolExecutor(5) as pool:
            checked = pool.submit(reader)
            list(pool.map(client, range(4)))
            writing.clear()
            checked.result()
        assert len(reads) > 5, "the reader ran alongside the writes"
        assert {o.status for o in operations} <= {200, 404, 409}, sorted(
            {o.status for o in operations}
        )
        conflicts = sum(o.status == 409 for o in operations)
        for document_id in documents:
            # Writes and deletes that took effect, as their clients were told.
            effective = [o for o in operations if o.document_id == document_id and o.status == 200]
            # The last acknowledged: those no other acknowledged operation started after.
            last = [o for o in effective if not any(p.started > o.ended for p in effective)]
            allowed = {None if o.kind == "delete" else o.tag for o in last}
            seen = [read_document(r.url, document_id) for r in replicas]
            assert seen[0] == seen[1], "both replicas read the same version"
            if seen[0] is None:
                assert None in allowed, (document_id, allowed)
                continue
            tag = single_tag(seen[0])
            assert tag in allowed, (document_id, tag, allowed)
            assert len(seen[0]) == expected_chunks(embedder, texts[tag])
            assert texts[tag].startswith(seen[0][0])
            assert texts[tag].endswith(seen[0][-1])
        for replica in replicas:
            for document_id, tags in searched_tags(replica.url, "damper setting vent").items():
                assert tags == {single_tag(read_document(replica.url, document_id) or [])}
    finally:
        for replica in replicas:
            replica.stop()
    print(f"{len(operations)} operations, {conflicts} answered 409")
