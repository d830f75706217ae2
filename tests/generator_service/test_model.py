"""Model loading: the tiny model, int8 conversion, token counting, refusing bad sources."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from generator_service.model import (
    HFTokenCounter,
    LoadedModel,
    convert_conv1d_to_linear,
    load_model,
)
from generator_service.tiny_model import EOS_TOKEN, main


def test_tiny_model_is_a_small_safetensors_gpt2(tiny_model_dir: Path, tiny_loaded: LoadedModel):
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert "model.safetensors" in files
    assert "pytorch_model.bin" not in files
    config = json.loads((tiny_model_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2"
    assert config["n_layer"] <= 4
    assert tiny_loaded.eos_token == EOS_TOKEN
    assert tiny_loaded.context_tokens == config["n_positions"]
    text = "Comfort+ costs $3.49 per month."
    assert tiny_loaded.tokenizer.decode(tiny_loaded.tokenizer(text)["input_ids"]) == text


def test_tiny_model_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "m"), "--layers", "1", "--width", "32", "--vocab-size", "300"]) == 0
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert str(tmp_path / "m") in capsys.readouterr().out


def test_conv1d_to_linear_keeps_logits(tiny_loaded: LoadedModel) -> None:
    model = copy.deepcopy(tiny_loaded.model)
    ids = torch.tensor([tiny_loaded.tokenizer("How much is Comfort+?")["input_ids"]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        replaced = convert_conv1d_to_linear(model)
        after = model(input_ids=ids).logits
    layers = tiny_loaded.model.config.n_layer
    assert replaced == 4 * layers  # c_attn, c_proj, c_fc, mlp.c_proj per block
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == replaced + 1  # + lm_head
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_token_counter_counts_and_truncates(tiny_loaded: LoadedModel) -> None:
    counter = HFTokenCounter(tiny_loaded.tokenizer)
    text = "The thermostat keeps a schedule for every room in the house."
    n = counter.count(text)
    assert n == len(tiny_loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    cut = counter.truncate(text, 3)
    assert text.startswith(cut)
    assert counter.count(cut) <= 3
    assert counter.truncate(text, n + 5) == text
    assert counter.count(f"a{EOS_TOKEN}b") == 3


def test_missing_or_empty_model_directory_fails_with_a_reason(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_model(str(tmp_path))


def test_cuda_asked_for_without_cuda_fails(tiny_model_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA"):
        load_model(str(tiny_model_dir), device="cuda")


def test_safetensors_only_loads_the_tiny_model(tiny_model_dir: Path) -> None:
    assert load_model(str(tiny_model_dir), safetensors_only=True).dtype == "float32"


def test_pickled_bin_weights_load_safely_unless_refused(tiny_model_dir: Path, tmp_path: Path):
    # DialoGPT-medium's main branch ships only an fp16 pytorch_model.bin: the same shape here.
    from safetensors.torch import load_file

    model_dir = tmp_path / "bin-only"
    model_dir.mkdir()
    for path in tiny_model_dir.glob("*.json"):
        (model_dir / path.name).write_bytes(path.read_bytes())
    weights = load_file(str(tiny_model_dir / "model.safetensors"))
    torch.save({k: v.half() for k, v in weights.items()}, model_dir / "pytorch_model.bin")
    loaded = load_model(str(model_dir))
    assert loaded.model.dtype == torch.float32
    with pytest.raises(OSError, match="safetensors"):
        load_model(str(model_dir), safetensors_only=True)
