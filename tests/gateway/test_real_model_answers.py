"""Answers written by the real bundled SmolLM2-135M-Instruct, judged by the grounding check.

The questions are the sample ones of tests/fixtures/sample_questions.json plus those a new user
asked when a real model was first put in the loop (issue 9): a wrong number, a swapped error
code or an invented phone number must never come back as ``generated``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.grounding import facts
from gateway.schemas import AskResponse
from gateway.text import content_words
from tests.conftest import FIXTURES_DIR, REPO_ROOT
from tests.gateway.conftest import LIVE_INTERNAL_KEY, FakeGenerator, LiveStack

pytestmark = pytest.mark.slow

SAMPLES = json.loads((FIXTURES_DIR / "sample_questions.json").read_text())
REPORT = REPO_ROOT / "test-output" / "real-model-answers.txt"

# Questions of the first real-model trial, with what the documents say.
TRIAL = [
    {"question": "How much does the Household plan cost?", "answer_contains": "$5.99"},
    {"question": "How long is the warranty on the Halo Pro?", "answer_contains": "3 years"},
    {"question": "How much does professional installation cost?", "answer_contains": "$119"},
    {"question": "What is the phone number for support?", "answer_contains": "1-800-555-0193"},
    {"question": "Why does my thermostat show error E3?", "answer_contains": "do not match"},
    {"question": "What does code E7 on the display mean?", "answer_contains": "firmware update"},
]
# What the model wrote for some of them: wrong, each passed the old grounding check.
WRONG = {
    "How much does the Household plan cost?": "The Household plan costs $5.98 per month.",
    "How long is the warranty on the Halo Pro?": "The warranty on the Halo Pro is 2 years.",
    "How much does professional installation cost?": (
        "The flat fee for professional installation is $1.05 per month."
    ),
    "What is the phone number for support?": (
        "The phone number for support is 1-800-243-7596. Lines are open Monday to Friday."
    ),
    "Why does my thermostat show error E3?": "The error E3 is a firmware update failure.",
    "What does code E7 on the display mean?": (
        "The steam turbine connected to is the steam turbine. The steam turbine connected to is "
        "the steam turbine. The steam turbine connected to is the steam turbine."
    ),
}


def holds(answer: str, gold: str) -> bool:
    """Whether an answer states the gold fact: its numbers, codes and names, or its words."""
    if gold.lower() in answer.lower():
        return True
    wanted = facts(gold, skip_first_word=False)
    if wanted:
        return wanted <= facts(answer, skip_first_word=False) | content_words(answer)
    return content_words(gold) <= content_words(answer)


def ask(url: str, question: str) -> dict[str, Any]:
    response = requests.post(f"{url}/v1/ask", json={"question": question}, timeout=180)
    assert response.status_code == 200, (question, response.text)
    body = response.json()
    AskResponse.model_validate(body)
    return body


@pytest.mark.timeout(1500)
def test_generated_answers_state_the_documents_facts(real_model_stack: LiveStack) -> None:
    ready = requests.get(f"{real_model_stack.url}/readyz", timeout=10).json()
    assert ready["generator_model"] == "smollm2-135m-instruct", ready
    samples = SAMPLES["answerable"] + TRIAL
    lines, wrong, right, generated = [], [], 0, 0
    # One at a time: greedy decoding then writes the same text on every run (batched with
    # others, a row's floating-point sums, and so its tokens, may differ).
    bodies = [ask(real_model_stack.url, sample["question"]) for sample in samples]
    for sample, body in zip(samples, bodies, strict=True):
        correct = holds(body["answer"], sample["answer_contains"])
        if body["mode"] == "generated":
            generated += 1
            if not correct:
                wrong.append(f"{sample['question']!r} -> {body['answer']!r}")
        right += correct
        why = (body.get("grounding") or {}).get("reason") or ",".join(body.get("degraded", []))
        lines.append(
            f"{body['mode']:10} {'ok ' if correct else 'BAD'} {sample['question']!r} -> "
            f"{body['answer'][:140]!r}" + (f" [{why}]" if why else "")
        )
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(
        f"{len(samples)} questions: {generated} generated ({len(wrong)} wrong), {right} hold "
        "the gold fact\n" + "\n".join(lines) + "\n"
    )
    assert wrong == [], "\n".join(wrong)
    # The model is in the loop: it answered every question in time, and the check let some of
    # its answers through.
    assert not any(body.get("degraded") for body in bodies), REPORT.read_text()
    assert generated >= 1, REPORT.read_text()


def test_the_trials_wrong_answers_are_never_shown_as_generated(
    real_model_stack: LiveStack, fake_generator: FakeGenerator
) -> None:
    fake_generator.answer = lambda body: WRONG.get(body["question"], "")
    app = create_app(
        GatewayConfig(
            retriever_url=real_model_stack.retriever.url,
            generator_url=fake_generator.url,
            internal_api_key=LIVE_INTERNAL_KEY,
        )
    )
    client = app.test_client()
    for question, wrong in WRONG.items():
        response = client.post("/v1/ask", json={"question": question})
        body = response.get_json()
        assert response.status_code == 200, body
        assert body["mode"] != "generated", (question, body)
        assert wrong not in body["answer"]
        if body["mode"] == "extractive":
            assert body["grounding"]["supported"] is False
            assert body["grounding"]["reason"], body["grounding"]


def test_a_streamed_real_answer_shows_only_checked_sentences(real_model_stack: LiveStack) -> None:
    from tests.gateway.conftest import parse_events

    response = requests.post(
        f"{real_model_stack.url}/v1/ask",
        json={"question": "How much does the Household plan cost?", "stream": True},
        timeout=180,
    )
    assert response.status_code == 200, response.text
    events = parse_events(response.text)
    done = events[-1][1]
    shown = "".join(data["text"] for name, data in events if name == "token")
    if done["mode"] == "generated":
        assert shown == done["answer"]
    # Whatever was shown passed the check: each of its numbers, codes and names is in a source.
    sources_text = " ".join(source["text"] for source in done["sources"]).lower()
    for fact in facts(shown):
        assert fact.split()[0] in sources_text, (fact, shown)
    assert "Question:" not in shown
    assert "<|im_end|>" not in shown
