"""Benchmark the generator: raw ``model.generate`` against the HTTP service, fp32/bf16/int8.

By default the model is a randomly initialised GPT-2 of DialoGPT-medium's shape (24 layers, 1024
wide, 16 heads, 50257 vocabulary) with the tokenizer the tests train on ``data/``: the compute
cost of GPT-2 does not depend on its weights. ``--model`` takes anything GENERATOR_MODEL takes
instead (the bundled ``smollm2-135m-instruct``, a directory, a hub name). For each dtype it
measures, in one run:

- raw: prompt tokens/s (one 256-token prefill), ``model.generate`` at batch 1 and batch 8
  (greedy, exactly ``--max-new-tokens`` new tokens), resident memory;
- HTTP: the service under gunicorn (one worker, one batching loop) with the same prompts (the
  service's own prompt template, the model's chat template when it has one), 8 requests one
  after another, then 4 and 8 at a time; the worker's resident memory.

Like for like: a real model ends its answers early (EOS, end of turn, stop strings) where raw
``generate`` writes every token, so the service runs without stop strings and each request sets
``min_new_tokens`` to its ``max_new_tokens``: every answer is exactly ``--max-new-tokens`` long,
and the bench fails when one is not.

Then it checks the issue's targets (service at 8 concurrent ≥ 90 % of raw batch 8 and ≥ 2× the
sequential service; batch-1 latency over HTTP within 10 % of raw) and writes the figures into
``docs/benchmarks.md`` between ``<!-- BEGIN generator -->`` and ``<!-- END generator -->``.

    python -m bench.generator_bench                             # full run on a quiet machine
    python -m bench.generator_bench --quick --output /tmp/b.md  # smoke test, tiny model
    python -m bench.generator_bench --model smollm2-135m-instruct  # the bundled chat model
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import BENCHMARKS_MD, machine_line, write_section
from qa_common.http_client import internal_auth_headers

ROOT = Path(__file__).resolve().parents[1]
MEDIUM = {"layers": 24, "width": 1024, "heads": 16, "vocab": 50257, "context": 1024}
QUICK = {"layers": 2, "width": 64, "heads": 4, "vocab": 50257, "context": 256}


@dataclass
class DtypeResult:
    dtype: str
    load_s: float = 0.0
    raw_rss_mb: float = 0.0
    prefill_tok_s: float = 0.0
    raw_b1_s: float = 0.0
    raw_b1_tok_s: float = 0.0
    raw_b8_tok_s: float = 0.0
    http_rss_mb: float = 0.0
    http_latency_s: float = 0.0
    http_seq_tok_s: float = 0.0
    http_conc_tok_s: dict[int, float] = field(default_factory=dict)
    # Raw batch 8 and HTTP 8 concurrent, run in turns (raw, HTTP, raw, HTTP, …): each run's tok/s.
    raw_b8_runs: list[float] = field(default_factory=list)
    http_c8_runs: list[float] = field(default_factory=list)
    error: str | None = None
    # The 1-minute load average when the raw run starts, the HTTP run starts, and all ends.
    load: list[float] = field(default_factory=list)


def rss_mb(pid: int | None = None) -> float:
    import psutil

    return psutil.Process(pid or os.getpid()).memory_info().rss / 2**20


def build_bench_model(out: Path, shape: dict[str, int]) -> Path:
    """Write a random GPT-2 of the given shape with the project's trained tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from generator_service.tiny_model import EOS_TOKEN, train_tokenizer

    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(ROOT / "data", 4096)
    eos = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = GPT2Config(
        vocab_size=shape["vocab"],
        n_positions=shape["context"],
        n_embd=shape["width"],
        n_layer=shape["layers"],
        n_head=shape["heads"],
        bos_token_id=eos,
        eos_token_id=eos,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    gc.collect()
    return out


def faq_requests(n: int) -> list[dict[str, Any]]:
    """Realistic request bodies: FAQ questions with their answers as snippets."""
    with (ROOT / "data" / "faq.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {"question": rows[i % len(rows)]["question"], "snippets": [rows[i % len(rows)]["answer"]]}
        for i in range(n)
    ]


def load_1min() -> float:
    return os.getloadavg()[0]


def service_prompt_builder(loaded: Any) -> Any:
    """The prompt builder the service makes for this model (template ``auto``)."""
    from generator_service.config import load_config
    from generator_service.model import HFTokenCounter, chat_formatter
    from generator_service.pipeline import prompt_builder

    return prompt_builder(
        load_config(generator_prompt_template="auto"),
        counter=HFTokenCounter(loaded.tokenizer),
        context_tokens=loaded.context_tokens,
        eos_token=loaded.eos_token,
        chat_format=chat_formatter(loaded.tokenizer),
    )


def measure_raw(
    model: str,
    dtype: str,
    bodies: list[dict],
    new_tokens: int,
    result: DtypeResult,
    batch8_only: bool = False,
) -> tuple[str, Callable[[], float]]:
    """Prefill and ``generate`` speed of the model loaded by the service's own code.

    Returns the model's description (name, what it was made from) and a function that
    runs raw batch 8 once more and returns its tok/s (to take turns with the service).
    """
    import torch

    from generator_service.model import load_model

    base_rss = rss_mb()
    started = time.perf_counter()
    loaded = load_model(model, dtype=dtype)
    result.load_s = time.perf_counter() - started
    model_obj, eos = loaded.model, loaded.eos_token_id
    builder = service_prompt_builder(loaded)
    counter = builder.counter
    prompts = [
        counter.encode(
            builder.build(b["question"], b["snippets"], [], max_new_tokens=new_tokens).text
        )
        for b in bodies
    ]

    with torch.inference_mode():
        long_ids = torch.randint(1, 1000, (1, min(256, loaded.context_tokens - 1)))
        model_obj(input_ids=long_ids)  # warm-up
        started = time.perf_counter()
        model_obj(input_ids=long_ids)
        result.prefill_tok_s = long_ids.shape[1] / (time.perf_counter() - started)

    @torch.inference_mode()
    def generate(batch: list[list[int]]) -> float:
        width = max(len(p) for p in batch)
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(batch):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        started = time.perf_counter()
        out = model_obj.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=eos,
        )
        elapsed = time.perf_counter() - started
        assert out.shape[1] - width == new_tokens
        return elapsed

    def batch8() -> float:
        return 8 * new_tokens / generate(prompts[:8])

    if not batch8_only:
        generate(prompts[:1])  # warm-up, both shapes
    generate(prompts[:8])
    if not batch8_only:
        b1 = [generate([p]) for p in prompts[:3]]
        result.raw_b1_s = statistics.median(b1)
        result.raw_b1_tok_s = new_tokens / result.raw_b1_s
    result.raw_b8_tok_s = batch8()
    result.raw_b8_runs.append(result.raw_b8_tok_s)
    result.raw_rss_mb = rss_mb() - base_rss
    made_from = f", from {loaded.origin}" if loaded.origin else ""
    return f"{loaded.name}{made_from}", batch8


def measure_http(
    model: str,
    dtype: str,
    bodies: list[dict],
    new_tokens: int,
    rounds: int,
    result: DtypeResult,
    raw_batch8: Callable[[], float] | None = None,
    turns: int = 2,
    batch8_only: bool = False,
) -> None:
    """The same prompts through gunicorn: sequential, then 4 and 8 at a time.

    8 at a time runs ``turns`` times, each after one more raw batch 8 (``raw_batch8``, the raw
    model still loaded): on a machine shared with other work, runs side by side see the same
    load, so the ratio of their medians is fairer than that of two runs minutes apart.
    """
    import psutil
    import requests

    from qa_common.process import ServiceProcess

    service = ServiceProcess(
        "generator_service",
        env={
            "GENERATOR_MODEL": model,
            "GENERATOR_DTYPE": dtype,
            "GENERATOR_MAX_BATCH_SIZE": "8",
            # The same decoding as the raw run: plain greedy, no loop breakers.
            "GENERATOR_NO_REPEAT_NGRAM_SIZE": "0",
            "GENERATOR_REPETITION_PENALTY": "1.0",
            "GENERATOR_MIN_NEW_TOKENS": "0",
            # Every answer as long as raw generate's: no stop strings, and min_new_tokens below.
            "GENERATOR_STOP": "[]",
            "GENERATOR_TIMEOUT_S": "600",
            "LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
        },
    )
    base = service.url
    with service:
        service.wait_ready(timeout_s=600)

        def ask(body: dict, tokens: int = new_tokens) -> tuple[float, int]:
            started = time.perf_counter()
            response = requests.post(
                f"{base}/v1/generate",
                json={**body, "max_new_tokens": tokens, "min_new_tokens": tokens},
                headers=internal_auth_headers(),
                timeout=600,
            )
            response.raise_for_status()
            written = response.json()["completion_tokens"]
            if written != tokens:
                raise RuntimeError(f"the service wrote {written} tokens, not {tokens}")
            return time.perf_counter() - started, written

        # Warm-up: the first passes at each batch shape are slower than the rest.
        ask(bodies[0])
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda b: ask(b, 4), bodies[:8]))
        if not batch8_only:
            started = time.perf_counter()
            sequential = [ask(b) for b in bodies[:8]]
            wall = time.perf_counter() - started
            result.http_seq_tok_s = sum(n for _, n in sequential) / wall
            result.http_latency_s = statistics.median(t for t, _ in sequential[:3])

        def concurrent(concurrency: int) -> float:
            batch = bodies[: concurrency * rounds]
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                done = list(pool.map(ask, batch))
            wall = time.perf_counter() - started
            return sum(n for _, n in done) / wall

        if not batch8_only:
            result.http_conc_tok_s[4] = concurrent(4)
        for turn in range(max(1, turns)):
            if raw_batch8 is not None and (turn or not result.raw_b8_runs):
                result.raw_b8_runs.append(raw_batch8())
            result.http_c8_runs.append(concurrent(8))
        result.http_conc_tok_s[8] = statistics.median(result.http_c8_runs)
        if result.raw_b8_runs:
            result.raw_b8_tok_s = statistics.median(result.raw_b8_runs)
        assert service.process is not None
        workers = psutil.Process(service.process.pid).children()
        result.http_rss_mb = max((rss_mb(w.pid) for w in workers), default=0.0)


def section_name(args: argparse.Namespace) -> str:
    """The random DialoGPT-shape run keeps the ``generator`` section; a named model has its own."""
    if not args.model:
        return "generator"
    return "generator-" + "".join(c if c.isalnum() else "-" for c in args.model.lower())[-60:]


def render(
    results: list[DtypeResult],
    args: argparse.Namespace,
    shape: dict[str, int],
    model_desc: str | None = None,
) -> str:
    """The markdown section for docs/benchmarks.md."""
    import torch
    import transformers

    if args.model:
        title = f"## Generator: {args.model}"
        model_line = f"Model: {model_desc or args.model}"
    else:
        title = "## Generator"
        model_line = (
            f"Model: random-weight GPT-2, {shape['layers']} layers × {shape['width']} wide, "
            f"{shape['heads']} heads, {shape['vocab']} vocabulary"
            f"{' (DialoGPT-medium shape)' if shape == MEDIUM else ' (quick smoke-test shape)'}"
        )
    command = " ".join(
        ["python -m bench.generator_bench"]
        + (["--quick"] if args.quick else [])
        + ([f"--model {args.model}"] if args.model else [])
        + (["--batch8-only"] if getattr(args, "batch8_only", False) else [])
        + [f"--{k.replace('_', '-')} {v}" for k, v in getattr(args, "shown_options", {}).items()]
    )
    loads = [x for r in results for x in r.load]
    lines = [
        title,
        "",
        f"{machine_line()} Written by `{command}`; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {torch.get_num_threads()} intra-op threads.",
        f"{model_line}; greedy, exactly {args.max_new_tokens} new tokens a request on both sides "
        "(the service without stop strings, each request with `min_new_tokens` = "
        "`max_new_tokens`); FAQ questions with their answer as the snippet, in the service's "
        "own prompt template. Service: gunicorn, 1 worker, 1 batching loop, batch ≤ 8. "
        "RSS raw is the growth of the benchmark process on loading the model. "
        "Each dtype runs raw, then the service, one after the other"
        + (
            f"; 1-minute load average {min(loads):.1f}–{max(loads):.1f} at the phases' starts "
            "and ends (other work shares the cores)."
            if loads
            else "."
        ),
        "",
        "| dtype | load s | RSS raw MB | prefill tok/s | raw b1 s | raw b1 tok/s | raw b8 tok/s "
        "| HTTP b1 s | HTTP 8 seq tok/s | HTTP 4 conc tok/s | HTTP 8 conc tok/s | RSS worker MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.dtype} | failed: {r.error} |" + " |" * 10)
            continue
        lines.append(
            f"| {r.dtype} | {r.load_s:.1f} | {r.raw_rss_mb:.0f} | {r.prefill_tok_s:.0f} "
            f"| {_num(r.raw_b1_s, 2)} | {_num(r.raw_b1_tok_s)} | {r.raw_b8_tok_s:.1f} "
            f"| {_num(r.http_latency_s, 2)} | {_num(r.http_seq_tok_s)} "
            f"| {_num(r.http_conc_tok_s.get(4, 0))} | {r.http_conc_tok_s.get(8, 0):.1f} "
            f"| {r.http_rss_mb:.0f} |"
        )
    lines += [
        "",
        "Targets (issue 3): HTTP at 8 concurrent ≥ 90 % of raw batch 8; ≥ 2× the same 8 "
        "requests served sequentially; HTTP batch-1 latency within 10 % of raw.",
        "",
        "| dtype | HTTP 8 conc / raw b8 | HTTP 8 conc / HTTP 8 seq | HTTP b1 / raw b1 | "
        "raw b8 / raw b1 |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if r.error or not r.raw_b8_tok_s:
            continue
        c8 = r.http_conc_tok_s.get(8, 0)
        vs_seq = vs_b1 = b8_b1 = "–"
        if r.http_seq_tok_s:
            vs_seq = f"{c8 / r.http_seq_tok_s:.2f}× {_mark(c8 >= 2 * r.http_seq_tok_s)}"
        if r.raw_b1_s:
            ok = r.http_latency_s <= 1.1 * r.raw_b1_s
            vs_b1 = f"{r.http_latency_s / r.raw_b1_s:.2f} {_mark(ok)}"
            b8_b1 = f"{r.raw_b8_tok_s / r.raw_b1_tok_s:.2f}×"
        lines.append(
            f"| {r.dtype} | {c8 / r.raw_b8_tok_s:.0%} {_mark(c8 >= 0.9 * r.raw_b8_tok_s)} "
            f"| {vs_seq} | {vs_b1} | {b8_b1} |"
        )
    lines += [
        "",
        "Raw batch 8 and HTTP 8 concurrent ran in turns (raw, HTTP, raw, HTTP, …) so that both "
        "see the same load; the tables give the medians. Each run, tok/s:",
        "",
    ]
    for r in results:
        if r.raw_b8_runs or r.http_c8_runs:
            raw = ", ".join(f"{x:.1f}" for x in r.raw_b8_runs)
            http = ", ".join(f"{x:.1f}" for x in r.http_c8_runs)
            lines.append(f"- {r.dtype}: raw b8 {raw}; HTTP 8 conc {http}.")
    lines.append("")
    return "\n".join(lines)


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _num(value: float, digits: int = 1) -> str:
    """A figure, or a dash where it was not measured (``--batch8-only``)."""
    return f"{value:.{digits}f}" if value else "–"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write its section."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few tokens: a smoke test")
    parser.add_argument("--dtypes", default="float32,bfloat16,int8")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="64; 8 with --quick")
    parser.add_argument("--rounds", type=int, default=None, help="batches per concurrency level")
    parser.add_argument(
        "--turns",
        type=int,
        default=None,
        help="raw batch 8 / HTTP 8 concurrent pairs, run in turns (3; 1 with --quick)",
    )
    parser.add_argument(
        "--batch8-only",
        action="store_true",
        help="only raw batch 8 against HTTP 8 concurrent (no batch 1, sequential, 4 at a time)",
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="reuse a built model here")
    parser.add_argument(
        "--model",
        default=None,
        help="a real model instead of the random one: anything GENERATOR_MODEL takes "
        "(smollm2-135m-instruct, a directory, a hub name); its figures get their own section",
    )
    parser.add_argument("--output", type=Path, default=BENCHMARKS_MD)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    args.max_new_tokens = args.max_new_tokens or (8 if args.quick else 64)
    rounds = args.rounds or (1 if args.quick else 2)
    args.shown_options = {
        k: v for k, v in vars(args).items() if k in ("max_new_tokens", "rounds", "turns") and v
    }
    args.turns = args.turns or (1 if args.quick else 3)
    shape = QUICK if args.quick else MEDIUM

    model_desc: str | None = None
    with tempfile.TemporaryDirectory(prefix="generator-bench-") as tmp:
        built = (
            None if args.model else build_bench_model(args.model_dir or Path(tmp) / "model", shape)
        )
        model = args.model or str(built)
        bodies = faq_requests(max(8, 8 * rounds))
        results = []
        for dtype in args.dtypes.split(","):
            result = DtypeResult(dtype)
            print(f"[{dtype}] raw generate …", flush=True)
            try:
                result.load.append(load_1min())
                model_desc, raw_batch8 = measure_raw(
                    model, dtype, bodies, args.max_new_tokens, result, args.batch8_only
                )
                print(f"[{dtype}] HTTP service …", flush=True)
                result.load.append(load_1min())
                measure_http(
                    model,
                    dtype,
                    bodies,
                    args.max_new_tokens,
                    rounds,
                    result,
                    raw_batch8=raw_batch8,
                    turns=args.turns,
                    batch8_only=args.batch8_only,
                )
                result.load.append(load_1min())
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                print(f"[{dtype}] failed: {exc}", file=sys.stderr)
            raw_batch8 = None  # free the raw model before the next dtype loads
            gc.collect()
            print(json.dumps(result.__dict__, default=str), flush=True)
            results.append(result)

    section = render(results, args, shape, model_desc)
    print(section)
    if not args.no_write:
        write_section(section_name(args), section, path=args.output)
        print(f"wrote {args.output}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
