"""Reading question/answer files: every format, and every bad input named by file and row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator_service.finetune.data import DataError, read_file, read_records


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_jsonl_and_json_give_the_same_records(tmp_path: Path) -> None:
    csv_file = write(
        tmp_path / "a.csv", 'id,question,answer\nq1,What is E3?,"A wiring mismatch."\n'
    )
    jsonl_file = write(
        tmp_path / "b.jsonl",
        json.dumps({"id": "q2", "question": "What is E7?", "answer": "A failed update."}) + "\n\n",
    )
    json_file = write(
        tmp_path / "c.json",
        json.dumps(
            {"records": [{"question": "Cost?", "answer": "$5.99.", "context": ["It is $5.99."]}]}
        ),
    )
    records = read_records([csv_file, jsonl_file, json_file])
    assert [(r.id, r.question, r.answer) for r in records[:2]] == [
        ("q1", "What is E3?", "A wiring mismatch."),
        ("q2", "What is E7?", "A failed update."),
    ]
    assert records[0].row == 2
    assert records[1].row == 1
    assert records[2].context == ("It is $5.99.",)
    # Without an id the question names the record, so inserting rows renumbers nothing.
    assert records[2].id.startswith("c.json#")


def test_an_id_less_record_keeps_its_id_when_rows_are_inserted_above_it(tmp_path: Path) -> None:
    first = read_file(write(tmp_path / "x.csv", "question,answer\nA?,a.\nB?,b.\n"))
    second = read_file(write(tmp_path / "x.csv", "question,answer\nNew?,n.\nA?,a.\nB?,b.\n"))
    assert {r.question: r.id for r in first}.items() <= {r.question: r.id for r in second}.items()


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.csv", "id,question\nq1,What?\n", "missing.csv, row 1: missing column(s) answer"),
        ("empty.csv", "", "empty.csv: empty file"),
        ("header-only.csv", "question,answer\n", "header-only.csv: empty file"),
        ("blank.csv", "question,answer\nWhat?,\n", "blank.csv, row 2: 'answer' is missing"),
        ("extra.csv", "question,answer\nWhat?,a,b\n", "extra.csv, row 2: more values"),
        ("bad.jsonl", '{"question": "a", "answer": "b"}\n{oops\n', "bad.jsonl, row 2: not valid"),
        ("list.jsonl", '["a", "b"]\n', "list.jsonl, row 1: expected an object"),
        ("number.jsonl", '{"question": 3, "answer": "b"}\n', "row 1: 'question' must be text"),
        ("obj.json", '{"question": "a"}', "obj.json: expected a list of records"),
        ("ctx.json", '[{"question": "a", "answer": "b", "context": 5}]', "row 1: 'context' must"),
        (
            "refuse.jsonl",
            '{"question": "a", "unanswerable": true}\n',
            "row 1: an unanswerable record needs the 'context'",
        ),
        ("notes.txt", "hello", "notes.txt: unsupported file type .txt"),
    ],
)
def test_bad_files_are_named_with_their_row(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(DataError) as raised:
        read_file(path)
    assert message in str(raised.value)
    assert str(path) in str(raised.value)


def test_a_missing_file_and_bytes_that_are_not_utf8_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_file(tmp_path / "nowhere.csv")
    path = tmp_path / "latin1.csv"
    path.write_bytes("question,answer\nCafé?,oui\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        read_file(path)


def test_a_duplicate_id_names_both_places(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", "id,question,answer\nq1,A?,a.\n")
    b = write(tmp_path / "b.jsonl", json.dumps({"id": "q1", "question": "B?", "answer": "b."}))
    with pytest.raises(DataError) as raised:
        read_records([a, b])
    assert "b.jsonl, row 1: id 'q1' was already used at" in str(raised.value)
    assert "a.csv, row 2" in str(raised.value)


def test_an_unanswerable_record_has_no_answer(tmp_path: Path) -> None:
    path = write(
        tmp_path / "u.jsonl",
        json.dumps({"question": "Is it red?", "unanswerable": True, "context": "It is big."}),
    )
    (record,) = read_file(path)
    assert record.answer is None
    assert record.context == ("It is big.",)
