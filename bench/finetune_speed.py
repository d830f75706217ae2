"""Fine-tuning speed and memory on this machine, and a whole fine-tune of data/.

    python -m bench.finetune_speed [--steps 4] [--skip-end-to-end] [--write-docs]

Each run is ``python -m generator_service.finetune`` in its own process (peak memory is the
process's), on the same records with their context (``--data``; by default data/faq.csv, each
answer's first sentence the target and the whole answer the context): full and LoRA, for the bundled
SmolLM2-135M-Instruct and a random-weight model of DialoGPT-medium's shape (GPT-2, 24 × 1024,
50257 tokens). Steps/s, tokens/s and peak memory come from the run's ``finetune.json``. Then the
README's workflow end to end: a retriever and a gateway with data/ ingested, and
``finetune --data data/faq.csv --gateway URL`` with its defaults, timed from start to finish.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.generator_bench import build_bench_model  # noqa: E402
from bench.report import machine_line, write_section  # noqa: E402
from qa_common.process import ServiceProcess  # noqa: E402

SECTION = "finetune-speed"
DIALOGPT_SHAPE = {"vocab": 50257, "context": 1024, "width": 1024, "layers": 24, "heads": 16}


def faq_with_context(out: Path) -> Path:
    """Write data/faq.csv as JSONL records whose context is their own answer."""
    with (ROOT / "data" / "faq.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with out.open("w") as handle:
        for row in rows:
            record = {
                "id": row["id"],
                "question": row["question"],
                "answer": row["answer"].split(". ")[0],
                "context": row["answer"],
            }
            handle.write(json.dumps(record) + "\n")
    return out


def finetune(argv: list[str], out: Path) -> tuple[dict[str, Any], float]:
    """Run the fine-tuning command; return its record and wall-clock seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "generator_service.finetune", *argv, "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - started
    return json.loads((out / "finetune.json").read_text()), seconds


def speed_rows(root: Path, data: Path, steps: int, batch: int, seq: int) -> list[dict[str, Any]]:
    """Time full and LoRA steps for each model shape."""
    dialogpt = build_bench_model(root / "dialogpt-medium-shape", DIALOGPT_SHAPE)
    rows = []
    for label, base in (
        ("SmolLM2-135M-Instruct", "smollm2-135m-instruct"),
        ("DialoGPT-medium shape (random)", str(dialogpt)),
    ):
        for method in ("full", "lora"):
            out = root / f"{Path(base).name}-{method}"
            record, seconds = finetune(
                [
                    "--data",
                    str(data),
                    "--base",
                    base,
                    "--method",
                    method,
                    "--steps",
                    str(steps),
                    "--batch-size",
                    str(batch),
                    "--max-seq-tokens",
                    str(seq),
                    "--eval-share",
                    "0",
                    "--refusal-share",
                    "0",
                    "--no-progress",
                ],
                out,
            )
            stats = record["training"]
            rows.append({"model": label, "method": method, "wall_s": seconds, **stats})
            print(json.dumps(rows[-1]))
    return rows


def end_to_end(root: Path) -> dict[str, Any]:
    """Run the README's workflow on data/ against a live retriever and gateway."""
    retriever = ServiceProcess(
        "retriever_service",
        env={"CHROMA_PATH": str(root / "chroma"), "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING"},
        log_path=root / "retriever.log",
    ).start()
    gateway: ServiceProcess | None = None
    try:
        retriever.wait_ready(timeout_s=300)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "retriever_service.ingest",
                str(ROOT / "data"),
                "--url",
                retriever.url,
                "--quiet",
            ],
            cwd=ROOT,
            check=True,
        )
        gateway = ServiceProcess(
            "gateway",
            env={"RETRIEVER_URL": retriever.url, "GENERATOR_URL": "http://127.0.0.1:9"},
            log_path=root / "gateway.log",
        ).start()
        gateway.wait_ready(timeout_s=60)
        out = root / "faq-model"
        record, seconds = finetune(
            ["--data", str(ROOT / "data" / "faq.csv"), "--gateway", gateway.url, "--no-progress"],
            out,
        )
    finally:
        if gateway is not None:
            gateway.stop()
        retriever.stop()
    return {"seconds": seconds, "record": record}


def render(rows: list[dict[str, Any]], e2e: dict[str, Any] | None, args: argparse.Namespace) -> str:
    """Render the tables."""
    lines = [
        f"{args.steps} optimizer steps of {args.batch_size} examples, up to {args.seq} tokens "
        "each, float32 on the CPU (2 cores), one process per run; steps/s over the whole run "
        f"(the first step included). {machine_line()}",
        "",
        "| model | method | trained parameters | steps/s | tokens/s | peak memory MB | "
        "run wall s (load + train + save) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['method']} | {row['trainable_parameters']:,} of "
            f"{row['total_parameters']:,} | {row['steps_per_s']:.3f} | "
            f"{row['tokens_per_s']:.0f} | {row['peak_rss_mb']:.0f} | {row['wall_s']:.0f} |"
        )
    if e2e is not None:
        record = e2e["record"]
        stats, examples = record["training"], record["examples"]
        evaluation = record["evaluation"]
        before, after = evaluation.get("before", {}), evaluation.get("after", {})
        lines += [
            "",
            "The README's workflow on data/ (`python -m generator_service.finetune --data "
            "data/faq.csv --gateway URL`, its defaults: LoRA, 3 epochs, SmolLM2): "
            f"**{e2e['seconds'] / 60:.1f} min end to end**, of which training "
            f"{stats['seconds'] / 60:.1f} min ({stats['steps']} steps, "
            f"{examples['train']} examples of which {examples['refusal']} refusals; held out "
            f"{examples['held_out']}). Held-out loss {before.get('loss', float('nan')):.3f} → "
            f"{after.get('loss', float('nan')):.3f}; held-out answers containing the reference "
            f"{before.get('contained', 0)}/{before.get('answers', 0)} → "
            f"{after.get('contained', 0)}/{after.get('answers', 0)}; refusals declined "
            f"{before.get('declined', 0)}/{before.get('refusals', 0)} → "
            f"{after.get('declined', 0)}/{after.get('refusals', 0)}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the speed runs and the end-to-end fine-tune."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq", type=int, default=384, help="--max-seq-tokens of each run")
    parser.add_argument("--data", type=Path, help="JSONL records with context")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as state:
        root = Path(state)
        data = args.data or faq_with_context(root / "faq.jsonl")
        rows = speed_rows(root, data, args.steps, args.batch_size, args.seq)
        e2e = None if args.skip_end_to_end else end_to_end(root)
    markdown = render(rows, e2e, args)
    print(markdown)
    if args.write_docs:
        title = "## Fine-tuning: speed and memory (`python -m bench.finetune_speed`)"
        write_section(SECTION, f"{title}\n\n{markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
