"""The fine-tuning benchmarks' arithmetic, on answers made up for the purpose."""

from __future__ import annotations

import argparse

from bench.finetune_quality import data_figures, render, xquad_figures


def body(mode: str, answer: str, reason: str | None = None) -> tuple[dict, float]:
    return {"mode": mode, "answer": answer, "grounding": {"reason": reason}}, 10.0


def test_xquad_figures_count_wrong_generated_answers() -> None:
    queries = [{"metadata": {"answers": [gold]}} for gold in ("Paris", "1999", "blue")]
    answered = [
        body("generated", "It is Paris."),
        body("generated", "In 2001."),
        body("extractive", "The sky is blue."),
    ]
    figures = xquad_figures(queries, answered)
    assert figures == {
        "questions": 3,
        "generated": 2,
        "generated_gold": 1,
        "wrong_generated": 1,
        "gold": 2,
        "f1": figures["f1"],
    }
    assert 0 < figures["f1"] < 1


def test_data_figures_and_the_rendered_target() -> None:
    answerable = [{"answer_contains": "$3.49"}, {"answer_contains": "6 people"}]
    answered = [body("generated", "It costs $3.49."), body("extractive", "Up to 5 people.")]
    off = [body("no_answer", "I could not find this."), body("extractive", "Something.")]
    figures = data_figures(answerable, answered, off)
    assert figures["correct"] == 1
    assert figures["generated_correct"] == 1
    assert figures["off_topic_refused"] == 1
    xquad = {
        "questions": 10,
        "generated": 2,
        "generated_gold": 2,
        "wrong_generated": 0,
        "gold": 8,
        "f1": 0.5,
    }
    better = {**xquad, "generated": 4, "generated_gold": 3, "wrong_generated": 1}
    outside = {"questions": 5, "refused": 4, "generated": 0}
    results = [
        {"label": "base", "xquad": xquad, "outside": outside, "data": figures, "declined": 0},
        {"label": "tuned", "xquad": better, "outside": outside, "data": figures, "declined": 2},
    ]
    for result in results:
        result["xquad_declines_ignored"] = result["xquad"]
    card = {
        "settings": {
            "method": "lora",
            "batch_size": 4,
            "learning_rate": 2e-4,
            "max_seq_tokens": 384,
        },
        "training": {"steps": 10, "seconds": 60.0},
        "examples": {"train": 40, "answer": 36, "refusal": 8},
        "data": [{"path": "/x/faq.csv", "records": 36}],
    }
    text = render(results, argparse.Namespace(seed=13), card)
    assert "(1.50×)" in text
    assert "≤ 5 % (25.0%)" in text
    assert "| tuned | 40.0% | 30.0% | 1 of 4 (25.0%) | 80.0% |" in text
    assert "tuned: all with gold 80.0%, token F1 0.500" in text
