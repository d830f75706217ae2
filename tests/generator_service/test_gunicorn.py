"""The service under real gunicorn: readiness, then concurrent requests batched by one loop."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from qa_common.process import ServiceProcess


@pytest.mark.slow
def test_gunicorn_serves_concurrent_requests(tiny_model_dir: Path, tmp_path: Path) -> None:
    service = ServiceProcess(
        "generator_service",
        env={
            "GENERATOR_MODEL": str(tiny_model_dir),
            "GENERATOR_TORCH_THREADS": "1",
            "GENERATOR_MAX_BATCH_SIZE": "4",
            # Eight requests at once need nine threads: one stays free to answer 429.
            "GENERATOR_THREADS": "9",
            "HF_HUB_OFFLINE": "1",
        },
        log_path=tmp_path / "generator.log",
    )
    with service:
        service.wait_ready(timeout_s=120)
        ready = requests.get(f"{service.url}/readyz", timeout=10).json()
        assert ready["model"] == str(tiny_model_dir)

        def ask(question: str) -> dict:
            response = requests.post(
                f"{service.url}/v1/generate",
                json={"question": question, "snippets": ["Plug in the hub."], "max_new_tokens": 24},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            return response.json()

        questions = [f"What does step {i} of the setup guide say?" for i in range(8)]
        alone = [ask(q) for q in questions[:2]]
        with ThreadPoolExecutor(max_workers=8) as pool:
            together = list(pool.map(ask, questions))
        assert all(r["completion_tokens"] > 0 for r in together)
        # Greedy answers do not depend on what else shared the batch.
        assert [r["answer"] for r in together[:2]] == [r["answer"] for r in alone]
        metrics = requests.get(f"{service.url}/metrics", timeout=10).text
        assert 'generator_batch_rows_count{kind="decode"}' in metrics
    assert service.process is not None
    assert service.process.returncode == 0, service.log_tail()
