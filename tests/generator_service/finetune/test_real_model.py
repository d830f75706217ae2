"""LoRA on the real bundled SmolLM2-135M-Instruct: its chat template, its end-of-turn token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator_service.app import create_app
from generator_service.config import load_config
from generator_service.finetune.cli import main
from generator_service.finetune.examples import IGNORE, Example, ExampleEncoder, end_of_turn_id
from generator_service.model import HFTokenCounter, chat_formatter, load_model
from generator_service.pipeline import prompt_builder

pytestmark = pytest.mark.slow


def test_lora_on_the_bundled_model_trains_in_its_chat_template_and_serves(
    smollm2_dir: Path, qa_file: Path, tmp_path: Path
) -> None:
    loaded = load_model(str(smollm2_dir))
    tokenizer = loaded.tokenizer
    im_end = tokenizer.get_vocab()["<|im_end|>"]
    assert end_of_turn_id(tokenizer) == im_end
    counter = HFTokenCounter(tokenizer)
    builder = prompt_builder(
        load_config(),
        counter=counter,
        context_tokens=256,
        eos_token=loaded.eos_token,
        chat_format=chat_formatter(tokenizer),
    )
    assert builder.template.name == "chat"
    example = Example("answer", "q", "What is E3?", ("E3 means a wiring mismatch.",), "A mismatch.")
    encoded = ExampleEncoder(builder, counter, im_end, 256).encode(example)
    assert encoded is not None
    pairs = zip(encoded.input_ids, encoded.labels, strict=True)
    prompt_ids = [token for token, label in pairs if label == IGNORE]
    prompt = tokenizer.decode(prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "E3 means a wiring mismatch." in prompt
    assert tokenizer.decode(encoded.input_ids[len(prompt_ids) :]) == "A mismatch.<|im_end|>"
    del loaded

    out = tmp_path / "smollm2-lora"
    argv = ["--data", str(qa_file), "--out", str(out), "--base", "smollm2-135m-instruct"]
    argv += ["--method", "lora", "--steps", "3", "--batch-size", "2", "--max-seq-tokens", "256"]
    assert main([*argv, "--eval-share", "0.2", "--eval-max", "2", "--no-progress"]) == 0
    record = json.loads((out / "finetune.json").read_text())
    assert record["settings"]["prompt_template"] == "chat"
    assert record["base"]["origin_repo"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert len(record["base"]["weights_sha256"]) == 64
    assert record["training"]["steps"] == 3
    assert set(record["evaluation"]) == {"before", "after"}

    app = create_app(load_config(generator_model=str(out)))
    client = app.test_client()
    try:
        ready = client.get("/readyz").get_json()
        answer = client.post(
            "/v1/generate",
            json={"question": "What is E3?", "snippets": ["E3 means a wiring mismatch."]},
        ).get_json()
    finally:
        # The batching loop runs on the model's own executor thread, which exit would wait for.
        app.extensions["generator"].close()
    assert ready["template"] == "chat"
    assert ready["model_origin"].startswith("fine-tuned from smollm2-135m-instruct (lora")
    assert answer["answer"].strip()
    assert "<|im_end|>" not in answer["answer"]
