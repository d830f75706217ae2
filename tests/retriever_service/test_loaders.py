"""File loaders behind the ingestion CLI: one test per format and per reported problem."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from retriever_service.ingest import IngestSummary, collect
from retriever_service.loaders import LoadedDocument, LoadProblem, SourceFile, discover, load


def load_one(path: Path, root: Path | None = None) -> list[LoadedDocument | LoadProblem]:
    return list(load(SourceFile(path, root or path.parent)))


def docs(items: list[LoadedDocument | LoadProblem]) -> list[LoadedDocument]:
    return [i for i in items if isinstance(i, LoadedDocument)]


def problems(items: list[LoadedDocument | LoadProblem]) -> list[LoadProblem]:
    return [i for i in items if isinstance(i, LoadProblem)]


def test_txt_file_is_one_document_with_path_id(tmp_path: Path) -> None:
    folder = tmp_path / "kb" / "notes"
    folder.mkdir(parents=True)
    path = folder / "support_hours-2025.txt"
    path.write_text("Support is open on weekdays.\n", encoding="utf-8")
    [doc] = load_one(path, tmp_path / "kb")
    assert isinstance(doc, LoadedDocument)
    assert doc.id == "notes/support_hours-2025.txt"
    assert doc.text == "Support is open on weekdays.\n"
    assert doc.metadata == {
        "source": "notes/support_hours-2025.txt",
        "title": "support hours 2025",
        "type": "text",
    }
    assert doc.as_payload() == {"id": doc.id, "text": doc.text, "metadata": doc.metadata}


def test_md_title_from_first_heading(tmp_path: Path) -> None:
    titled = tmp_path / "getting-started.md"
    titled.write_text("\n# Getting Started with Halo\n\nPlug it in.\n", encoding="utf-8")
    [doc] = load_one(titled)
    assert doc.metadata["title"] == "Getting Started with Halo"
    untitled = tmp_path / "no-heading.md"
    untitled.write_text("Just text.\n# Late heading\n", encoding="utf-8")
    [doc] = load_one(untitled)
    assert doc.metadata["title"] == "no heading"


def test_empty_text_file_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("  \n\n", encoding="utf-8")
    [problem] = load_one(path)
    assert isinstance(problem, LoadProblem)
    assert "empty" in problem.message


def test_undecodable_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    [problem] = load_one(path)
    assert isinstance(problem, LoadProblem)
    assert problem.source == "latin1.txt"


def test_csv_question_answer_rows_with_id_column(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text(
        "ID,Question,Answer,Category\n"
        "faq-1,How much is it?,It costs $3.49.,pricing\n"
        'faq-2,"Does it work, offline?","Yes, it does.",hardware\n',
        encoding="utf-8-sig",
    )
    loaded = load_one(path)
    assert problems(loaded) == []
    first, second = docs(loaded)
    assert first.id == "faq-1"
    assert first.text == "How much is it?\nIt costs $3.49."
    assert first.metadata == {
        "source": "faq.csv",
        "category": "pricing",
        "question": "How much is it?",
    }
    assert second.id == "faq-2"
    assert second.text == "Does it work, offline?\nYes, it does."


def content_id(name: str, text: str) -> str:
    return f"{name}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def test_csv_rows_without_id_are_named_by_content_and_problems_by_row(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text("question,answer\nQ1?,A1.\nQ2?,\nQ3?,A3.\n", encoding="utf-8")
    loaded = load_one(path)
    assert [d.id for d in docs(loaded)] == [
        content_id("faq.csv", "Q1?\nA1."),
        content_id("faq.csv", "Q3?\nA3."),
    ]
    [problem] = problems(loaded)
    assert problem.source == "faq.csv#row3"
    assert "empty" in problem.message


def test_record_ids_stay_stable_when_a_row_is_inserted_above(tmp_path: Path) -> None:
    path = tmp_path / "faq.csv"
    path.write_text("question,answer\nQ1?,A1.\nQ2?,A2.\n", encoding="utf-8")
    before = [d.id for d in docs(load_one(path))]
    path.write_text("question,answer\nQ0?,A0.\nQ1?,A1.\nQ2?,A2.\nQ2?,A2.\n", encoding="utf-8")
    after = [d.id for d in docs(load_one(path))]
    assert after[1:3] == before
    # The same row twice is two documents, never one id used twice.
    assert after[3] == before[1] + "-2"
    lines = tmp_path / "notes.jsonl"
    lines.write_text('{"text": "Alpha."}\n{"text": "Beta."}\n', encoding="utf-8")
    before = [d.id for d in docs(load_one(lines))]
    lines.write_text('{"text": "New."}\n{"text": "Alpha."}\n{"text": "Beta."}\n', encoding="utf-8")
    assert [d.id for d in docs(load_one(lines))][1:] == before


def test_csv_with_text_column(tmp_path: Path) -> None:
    path = tmp_path / "notes.csv"
    path.write_text("doc_id,text,author\nn1,First note.,ann\n,Second note.,bob\n", encoding="utf-8")
    first, second = docs(load_one(path))
    assert (first.id, first.text, first.metadata["author"]) == ("n1", "First note.", "ann")
    assert second.id == content_id("notes.csv", "Second note.")
    assert "doc_id" not in first.metadata
    assert "text" not in first.metadata


def test_csv_without_usable_columns_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("name,value\na,1\n", encoding="utf-8")
    [problem] = load_one(path)
    assert isinstance(problem, LoadProblem)
    assert "question and answer" in problem.message


def test_jsonl_with_and_without_ids_and_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    lines = [
        json.dumps({"id": "r1", "text": "One.", "metadata": {"version": "3.0", "n": 2}}),
        json.dumps({"text": "Two.", "kind": "note", "tags": ["a", "b"], "_private": "x"}),
        "{not json",
        "",
        json.dumps({"title": "no text here"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"_id": "r6", "content": "Six."}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = load_one(path)
    good = docs(loaded)
    assert [d.id for d in good] == ["r1", content_id("notes.jsonl", "Two."), "r6"]
    assert good[0].metadata == {"source": "notes.jsonl", "version": "3.0", "n": 2}
    assert good[1].metadata == {"source": "notes.jsonl", "kind": "note", "tags": '["a", "b"]'}
    assert good[2].text == "Six."
    bad = problems(loaded)
    assert [p.source for p in bad] == ["notes.jsonl#L3", "notes.jsonl#L5", "notes.jsonl#L6"]
    assert "invalid JSON" in bad[0].message


def test_beir_title_is_joined_in_front(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(
        json.dumps({"_id": "d1", "title": "Brightfern Halo", "text": "A smart thermostat."}) + "\n",
        encoding="utf-8",
    )
    [doc] = docs(load_one(path))
    assert doc.id == "d1"
    assert doc.text == "Brightfern Halo\n\nA smart thermostat."
    assert doc.metadata["title"] == "Brightfern Halo"


@pytest.mark.parametrize(
    "content",
    [
        [{"id": "p1", "text": "Policy one."}, {"id": "p2", "body": "Policy two."}],
        {"documents": [{"id": "p1", "text": "Policy one."}, {"id": "p2", "body": "Policy two."}]},
    ],
    ids=["list", "documents-key"],
)
def test_json_list_and_documents_object(tmp_path: Path, content: object) -> None:
    path = tmp_path / "policies.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    assert [(d.id, d.text) for d in docs(load_one(path))] == [
        ("p1", "Policy one."),
        ("p2", "Policy two."),
    ]


def test_json_single_object_strings_and_invalid(tmp_path: Path) -> None:
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"text": "Only one."}), encoding="utf-8")
    [doc] = docs(load_one(single))
    assert doc.id == "one.json"
    assert doc.text == "Only one."

    strings = tmp_path / "strings.json"
    strings.write_text(json.dumps(["First.", 5, "Third."]), encoding="utf-8")
    loaded = load_one(strings)
    assert [d.id for d in docs(loaded)] == [
        content_id("strings.json", "First."),
        content_id("strings.json", "Third."),
    ]
    assert [p.source for p in problems(loaded)] == ["strings.json#1"]

    scalar = tmp_path / "scalar.json"
    scalar.write_text("42", encoding="utf-8")
    [problem] = load_one(scalar)
    assert isinstance(problem, LoadProblem)

    broken = tmp_path / "broken.json"
    broken.write_text("[{", encoding="utf-8")
    [problem] = load_one(broken)
    assert isinstance(problem, LoadProblem)
    assert "cannot read" in problem.message


def test_discover_skips_hidden_and_counts_unsupported(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.MD").write_text("b", encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("h", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "notes.md").write_text("g", encoding="utf-8")
    (tmp_path / "archive.zip").write_bytes(b"PK")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    sources, skipped = discover([tmp_path])
    assert [s.relative for s in sources] == ["a.txt", "sub/b.MD"]
    assert sorted(p.name for p in skipped) == ["archive.zip", "image.png"]
    # A single file given directly: relative to its folder; unsupported is skipped.
    sources, skipped = discover([tmp_path / "a.txt", tmp_path / "image.png"])
    assert [s.relative for s in sources] == ["a.txt"]
    assert len(skipped) == 1


def test_discover_missing_path_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        discover([tmp_path / "absent"])


def test_collect_reports_repeated_ids_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"id": "dup", "text": "First."}) + "\n", encoding="utf-8"
    )
    (tmp_path / "b.json").write_text(
        json.dumps([{"id": "dup", "text": "Second."}]), encoding="utf-8"
    )
    (tmp_path / "c.csv").write_text("id,question,answer\ndup,Q?,A.\nok,Q2?,A2.\n", encoding="utf-8")
    (tmp_path / "skip.exe").write_bytes(b"x")
    summary = IngestSummary()
    collected = collect([str(tmp_path)], summary)
    assert [(d.id, d.text) for d in collected] == [("dup", "First."), ("ok", "Q2?\nA2.")]
    assert (summary.files, summary.skipped_files) == (3, 1)
    assert len(summary.problems) == 2
    assert all("already used in a.jsonl" in p.message for p in summary.problems)
    assert {p.source for p in summary.problems} == {"b.json", "c.csv"}


def test_sample_data_loads_without_problems() -> None:
    from tests.conftest import DATA_DIR

    summary = IngestSummary()
    collected = collect([str(DATA_DIR)], summary)
    assert summary.problems == []
    assert summary.skipped_files == 0
    ids = [d.id for d in collected]
    assert len(ids) == len(set(ids)) >= 45
    assert "guides/troubleshooting.md" in ids
    assert "faq-001" in ids
    assert "policy-returns" in ids
