"""The COVID-QA BEIR builder on a tiny hand-made SQuAD-format file, not the real data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.datasets.covid_qa import MAX_WORDS, MIN_WORDS, main, split_passages


def sentences(label: str, count: int) -> list[str]:
    return [f"{label} fact {i:02d} says the topic matters here." for i in range(count)]


# Two paragraphs of 15 nine-word sentences (135 words each): together over MAX_WORDS, so the
# cut falls on the blank line between them.
FIRST = " ".join(sentences("Alpha", 15))
SECOND = " ".join(sentences("Beta", 15))
LONG_CONTEXT = f"{FIRST}\n\n{SECOND}"
SHORT_CONTEXT = "Masks reduce spread. The study followed 40 households for two weeks in spring."
CROSSING = "Alpha fact 14 says the topic matters here.\n\nBeta fact 00 says"


def qa(qid: int, question: str, text: str, start: int) -> dict[str, Any]:
    answer = {"text": text, "answer_start": start}
    return {"id": qid, "question": question, "answers": [answer], "is_impossible": False}


def source() -> dict[str, Any]:
    at = LONG_CONTEXT.index
    long_qas = [
        qa(1, "What crosses the boundary?", CROSSING, at(CROSSING)),
        qa(2, "What does beta fact 7 say?", "Beta fact 07", at("Beta fact 07")),
        # answer_start two characters off, as in some COVID-QA answers
        qa(3, "What does alpha fact 3 say?", "Alpha fact 03", at("Alpha fact 03") + 2),
        qa(4, "What is never said?", "Gamma rays", 10),
        # the same question again, answered in the other passage
        qa(5, "  What does beta fact 7   say?", "Alpha fact 09", at("Alpha fact 09")),
        # leading whitespace in the marked span
        qa(6, "Which is the last beta fact?", " Beta fact 14", at("Beta fact 14") - 1),
    ]
    short_qas = [qa(7, "What reduces spread?", "Masks", 0)]
    return {
        "data": [
            {"paragraphs": [{"context": LONG_CONTEXT, "document_id": 101, "qas": long_qas}]},
            {
                "title": "Short paper",
                "paragraphs": [{"context": SHORT_CONTEXT, "document_id": 202, "qas": short_qas}],
            },
        ]
    }


def read_jsonl(path: Path) -> dict[str, dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {row["_id"]: row for row in rows}


@pytest.fixture
def view(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    src = tmp_path / "covid.json"
    src.write_text(json.dumps(source()), encoding="utf-8")
    out = tmp_path / "view"
    assert main([str(src), str(out), "--commit", "abc1234"]) == 0
    return out, capsys.readouterr().out


def test_corpus_is_cut_at_the_paragraph_boundary(view: tuple[Path, str]) -> None:
    out, _ = view
    corpus = read_jsonl(out / "corpus.jsonl")
    assert list(corpus) == ["101-p0", "101-p1", "202-p0"]
    assert corpus["101-p0"]["text"] == FIRST
    assert corpus["101-p1"]["text"] == SECOND
    assert corpus["202-p0"]["text"] == SHORT_CONTEXT
    assert corpus["101-p0"]["title"] == ""
    assert corpus["202-p0"]["title"] == "Short paper"
    meta = corpus["101-p1"]["metadata"]
    assert meta == {
        "paper_id": "101",
        "passage_index": 1,
        "char_start": len(FIRST) + 2,
        "char_end": len(LONG_CONTEXT),
    }


def test_queries_and_qrels(view: tuple[Path, str]) -> None:
    out, printed = view
    queries = read_jsonl(out / "queries.jsonl")
    assert list(queries) == ["1", "2", "3", "6", "7"]  # 4 has no answer, 5 repeats 2
    assert queries["2"]["text"] == "What does beta fact 7 say?"
    assert queries["2"]["metadata"] == {
        "answers": ["Beta fact 07", "Alpha fact 09"],
        "paper_id": "101",
    }
    assert queries["6"]["metadata"]["answers"] == ["Beta fact 14"]
    assert queries["7"]["metadata"]["paper_id"] == "202"

    lines = (out / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    assert lines[1:] == [
        "1\t101-p0\t1",
        "1\t101-p1\t1",
        "2\t101-p0\t1",
        "2\t101-p1\t1",
        "3\t101-p0\t1",
        "6\t101-p1\t1",
        "7\t202-p0\t1",
    ]
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "abc1234" in readme
    assert "Apache" in readme
    for count in ("papers: 2", "passages: 3", "questions kept: 5", "no locatable answer: 1"):
        assert count in printed
        assert count in readme


def test_long_paragraph_is_cut_between_sentences() -> None:
    context = " ".join(sentences("Gamma", 40))  # 360 words, one paragraph
    spans = split_passages(context)
    assert len(spans) == 2
    assert spans[0][0] == 0
    assert spans[-1][1] == len(context)
    for start, end in spans:
        assert context[start:end].endswith(".")
        assert MIN_WORDS <= len(context[start:end].split()) <= MAX_WORDS


def test_sentence_longer_than_a_passage_is_cut_evenly() -> None:
    context = " ".join(f"word{i}" for i in range(450))
    spans = split_passages(context)
    assert [len(context[a:b].split()) for a, b in spans] == [150, 150, 150]
    assert split_passages(" \n ") == []
