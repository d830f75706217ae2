"""Write the fine-tuned model: safetensors, tokenizer, model card, all or nothing.

Everything goes to a hidden temporary directory beside ``--out`` that is renamed into place
last, so a failed or interrupted run leaves ``--out`` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from generator_service.model_sources import FINETUNE_RECORD as RECORD_FILE


class OutputExists(FileExistsError):
    """``--out`` holds something and ``--overwrite`` was not given."""


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, an output directory that would be overwritten unasked."""
    if out.exists() and not out.is_dir():
        raise OutputExists(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExists(f"{out} is not empty; choose another --out or pass --overwrite")


def write_atomically(out: Path, fill: Callable[[Path], None], overwrite: bool) -> Path:
    """Let ``fill`` write a directory, then put it at ``out`` in one rename."""
    check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        fill(work)
        work.chmod(0o755)  # mkdtemp makes it private; a model directory is usually shared
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, retired / out.name)
            try:
                os.rename(work, out)
            except OSError:
                os.rename(retired / out.name, out)  # put the old one back
                raise
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _figure(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1%}" if 0 <= value <= 1 else f"{value:.4g}"
    return str(value)


def model_card(record: dict[str, Any]) -> str:
    """Render the model card (README.md) from the run's record."""
    base = record["base"]
    settings = record["settings"]
    lines = [
        "---",
        f"base_model: {base.get('origin_repo') or base['name']}",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        f"tags: [grounded-qa, fine-tuned, {settings['method']}]",
        "---",
        "",
        f"# {record['name']}",
        "",
        f"Fine-tuned from **{base['name']}** to answer questions from retrieved snippets in "
        "grounded-qa's own prompt, and to write the service's decline sentence when the "
        "snippets do not answer.",
        "",
        "Serve it with:",
        "",
        "```bash",
        f"GENERATOR_MODEL={record['serve']['model']} "
        f"GENERATOR_PROMPT_TEMPLATE={record['serve']['prompt_template']} ./scripts/start.sh",
        "```",
        "",
        "## Base model",
        "",
        f"- name: `{base['name']}`",
        f"- revision: `{base.get('revision') or '–'}`",
        f"- made from: {base.get('origin') or '–'}",
        f"- weights sha256: `{base.get('weights_sha256') or '–'}`",
        "",
        "## Data",
        "",
        "| file | sha256 | records |",
        "|---|---|---:|",
    ]
    for item in record["data"]:
        lines.append(f"| `{item['path']}` | `{item['sha256']}` | {item['records']} |")
    examples = record["examples"]
    lines += [
        "",
        f"Examples: {examples['train']} for training, {examples['held_out']} held out "
        f"({examples['answer']} answers, {examples['refusal']} refusals; "
        f"{examples['skipped_too_long']} skipped as too long for {settings['max_seq_tokens']} "
        f"tokens). Snippets from: {', '.join(examples['snippets_from']) or '–'}.",
        "",
        "Deleting a document from the service does not remove what this model learned from "
        "it: fine-tune again from the base model after removing data you must not keep.",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    lines += [f"| {key} | {_figure(value)} |" for key, value in settings.items()]
    lines += ["", "## Held-out figures (greedy, through the served prompt)", ""]
    lines += [
        "| | loss | answers containing the reference | refusals declined | answers wrongly "
        "declined |",
        "|---|---:|---:|---:|---:|",
    ]
    for phase in ("before", "after"):
        report = record["evaluation"].get(phase)
        if report is None:
            lines.append(f"| {phase} | – | – | – | – |")
            continue
        lines.append(
            f"| {phase} | {report['loss']:.3f} | {_figure(report['contained_share'])} "
            f"({report['contained']}/{report['answers']}) | "
            f"{_figure(report['declined_share'])} ({report['declined']}/{report['refusals']}) | "
            f"{report['answers_declined']} |"
        )
    stats = record["training"]
    lines += [
        "",
        "## Training",
        "",
        f"{stats['steps']} steps in {stats['seconds']:.0f} s ({stats['steps_per_s']:.3f} "
        f"steps/s, {stats['tokens_per_s']:.0f} tokens/s) on {settings['device']}; loss "
        f"{stats['first_loss']:.3f} → {stats['final_loss']:.3f}; "
        f"{stats['trainable_parameters']:,} of {stats['total_parameters']:,} parameters "
        f"trained; peak memory {stats['peak_rss_mb']:.0f} MB.",
        "",
        f"Made {record['created']} by `python -m generator_service.finetune`.",
        "",
    ]
    return "\n".join(lines)


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Write the machine-readable record and the model card into ``directory``."""
    (directory / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    (directory / "README.md").write_text(model_card(record))
