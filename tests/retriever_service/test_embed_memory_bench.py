"""The embedding-memory benchmark runs end to end at a tiny size, so that the script cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import embed_memory as bench


def _dataset(root: Path) -> Path:
    paragraphs = [
        f"Paragraph {n} says the boiler holds {n} bar. The valve opens slowly. It is grey."
        for n in range(80)  # the workload samples up to 64 paragraphs at once
    ]
    (root / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": str(n), "text": p}) + "\n" for n, p in enumerate(paragraphs))
    )
    (root / "queries.jsonl").write_text(
        "".join(
            json.dumps({"_id": str(n), "text": f"what holds {n} bar?"}) + "\n" for n in range(9)
        )
    )
    return root


def test_workload_is_seeded_and_mixes_the_three_kinds_of_call(tmp_path: Path) -> None:
    calls = bench.workload(_dataset(tmp_path), 200)
    assert calls == bench.workload(tmp_path, 200)
    sizes = [len(call) for call in calls]
    assert 1 in sizes
    assert any(5 <= s <= 40 for s in sizes)
    assert max(sizes) <= 64
    assert all(text for call in calls for text in call)


@pytest.mark.slow
def test_both_sides_run_in_fresh_processes_and_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--rounds", "50", "--warm-up", "25", "--no-docs", "--dataset"]
    assert bench.main([*args, str(_dataset(tmp_path))]) == 0
    printed = capsys.readouterr().out
    assert "| bare |" in printed
    assert "| service |" in printed
    assert "end vs warm-up" in printed
