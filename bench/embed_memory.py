"""Embedding memory over a long mixed workload, service vs bare: ``python -m bench.embed_memory``.

    python -m bench.embed_memory [--rounds 600] [--warm-up 100] [--no-docs]

Each side runs in a fresh process on the same seeded workload, the mix the retriever sees:
single questions (searches), batches of 5-40 sentences (the gateway's extraction calls to
``/v1/embed``) and batches of up to 64 paragraphs (ingestion), drawn from XQuAD-en
(``../shared/eval/xquad-en``, or DATASET_DIR). "bare" is ``SentenceTransformer.encode`` loaded
as the service loads it (same source, dtype, batch size); "service" is the retriever's
``SentenceTransformerEmbedder``. Resident memory is sampled every 25 rounds; the target is the
service's memory at the end within 10 % of its level after the warm-up rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from bench.report import machine_line, write_section

SECTION = "embed-memory"
DEFAULT_DATASET = Path(__file__).resolve().parents[2] / "shared" / "eval" / "xquad-en"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SAMPLE_EVERY = 25
TARGET = 0.10
SEED = 11


def workload(dataset: Path, rounds: int, seed: int = SEED) -> list[list[str]]:
    """Draw the seeded mix of question, sentence-batch and paragraph-batch calls."""
    paragraphs = [
        json.loads(line)["text"] for line in (dataset / "corpus.jsonl").read_text().splitlines()
    ]
    questions = [
        json.loads(line)["text"] for line in (dataset / "queries.jsonl").read_text().splitlines()
    ]
    sentences = [s.strip() + "." for p in paragraphs for s in p.split(". ") if s.strip()]
    rng = random.Random(seed)
    calls = []
    for _ in range(rounds):
        kind = rng.random()
        if kind < 0.4:
            calls.append([rng.choice(questions)])
        elif kind < 0.9:
            calls.append(rng.sample(sentences, rng.randint(5, 40)))
        else:
            calls.append(rng.sample(paragraphs, rng.randint(1, 64)))
    return calls


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def run_side(side: str, dataset: Path, rounds: int) -> dict[str, Any]:
    """Embed the workload on one side in this process; return memory samples and throughput."""
    from retriever_service.embedder import load_embedder, resolve_model_source

    calls = workload(dataset, rounds)
    embedder = load_embedder(MODEL)
    if side == "bare":
        model = embedder._model  # the very model the service loads, called as the library is
        batch_size = embedder.batch_size

        def encode(texts: list[str]) -> Any:
            return model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    else:
        encode = embedder.encode
    samples = [(0, _rss_mb())]
    texts = 0
    started = time.perf_counter()
    for number, call in enumerate(calls, start=1):
        encode(call)
        texts += len(call)
        if number % SAMPLE_EVERY == 0:
            samples.append((number, _rss_mb()))
    seconds = time.perf_counter() - started
    return {
        "side": side,
        "dtype": embedder.dtype,
        "source": resolve_model_source(MODEL),
        "samples": samples,
        "texts": texts,
        "seconds": seconds,
    }


def _at(samples: Sequence[Sequence[float]], round_number: int) -> float:
    return next(rss for number, rss in samples if number >= round_number)


def render(results: list[dict[str, Any]], rounds: int, warm_up: int, machine: str) -> str:
    """Render the figures as the docs section."""
    lines = [
        "## Embedding memory over a long mixed workload (`python -m bench.embed_memory`)",
        "",
        f"{rounds} embedding calls in one process per side, seeded, from XQuAD-en: 40 % single "
        "questions, 50 % batches of 5-40 sentences (the gateway's extraction calls), 10 % "
        "batches of 1-64 paragraphs (ingestion). *bare*: `SentenceTransformer.encode` on the "
        "model as the service loads it; *service*: the retriever's embedder, which runs power-"
        "of-two batches padded to a multiple of 16 tokens. Resident memory is sampled every "
        f"{SAMPLE_EVERY} calls; the target is the memory at the end within "
        f"{TARGET:.0%} of the level after {warm_up} warm-up calls.",
        "",
        "| side | dtype | loaded MB | after warm-up MB | end MB | peak MB | end vs warm-up | "
        "texts/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        samples = result["samples"]
        warm = _at(samples, warm_up)
        end = samples[-1][1]
        change = end / warm - 1
        verdict = "met" if change <= TARGET else "**missed**"
        lines.append(
            f"| {result['side']} | {result['dtype']} | {samples[0][1]:.0f} | {warm:.0f} | "
            f"{end:.0f} | {max(rss for _, rss in samples):.0f} | {change:+.1%} ({verdict}) | "
            f"{result['texts'] / result['seconds']:.0f} |"
        )
    lines += ["", "Memory (MB) every 100 calls:", ""]
    checkpoints = list(range(0, rounds + 1, 100))
    lines.append("| side | " + " | ".join(str(c) for c in checkpoints) + " |")
    lines.append("|---|" + "---|" * len(checkpoints))
    for result in results:
        cells = [f"{_at(result['samples'], c):.0f}" for c in checkpoints]
        lines.append(f"| {result['side']} | " + " | ".join(cells) + " |")
    lines += ["", machine]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.embed_memory", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=600)
    parser.add_argument("--warm-up", type=int, default=100)
    parser.add_argument("--dataset", type=Path, default=None)
    parser.add_argument("--side", choices=("bare", "service"), help=argparse.SUPPRESS)
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/benchmarks.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dataset = args.dataset or Path(os.environ.get("DATASET_DIR", DEFAULT_DATASET))
    if args.side:
        print(json.dumps(run_side(args.side, dataset, args.rounds)))
        return 0
    results = []
    for side in ("bare", "service"):
        print(f"{side}: {args.rounds} calls in a fresh process...", flush=True)
        # A fresh interpreter per side: what one side leaves in the allocator must not count
        # against the other.
        command = [sys.executable, "-m", "bench.embed_memory", "--side", side]
        command += ["--rounds", str(args.rounds), "--dataset", str(dataset)]
        done = subprocess.run(
            command,
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    markdown = render(results, args.rounds, args.warm_up, machine_line())
    print(markdown)
    if not args.no_docs:
        write_section(SECTION, markdown)
        print(f"wrote docs/benchmarks.md (section {SECTION})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
