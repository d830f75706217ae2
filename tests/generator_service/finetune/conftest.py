"""Fixtures for the fine-tuning tests: a small question/answer set made from data/faq.csv."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
FAQ = REPO_ROOT / "data" / "faq.csv"


def faq_records(count: int) -> list[dict[str, object]]:
    """Return FAQ rows as records: the answer's first sentence, the whole answer as context."""
    with FAQ.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [
        {
            "id": row["id"],
            "question": row["question"],
            "answer": row["answer"].split(". ")[0].rstrip(".") + ".",
            "context": [row["answer"]],
        }
        for row in rows
    ]


@pytest.fixture
def qa_file(tmp_path: Path) -> Path:
    """A JSONL file of 12 FAQ questions with their context."""
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in faq_records(12)))
    return path
