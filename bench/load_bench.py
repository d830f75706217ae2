"""The whole system under load, with the bundled real model: ``python -m bench.load_bench``.

    python -m bench.load_bench [--questions 2000] [--concurrency 32] [--write-docs]

Starts the three services as shipped (gunicorn, default settings; embedded Chroma in a temporary
directory; the generator serving the bundled SmolLM2-135M-Instruct), ingests XQuAD-en's
paragraphs (``../shared/eval/xquad-en``, or DATASET_DIR), and asks its questions (cycled, seeded
order) through ``POST /v1/ask`` from ``--concurrency`` clients at once. A client that gets 429
waits the ``Retry-After`` it was given and asks again, as a well-behaved client does; shedding
is then a delay, not the answer. Reports every final status, the 5xx (target: none), the share
answered 200 (target ≥ 95 %; extractive and degraded answers count), whether every 429 carried
``Retry-After``, p50/p95/p99 latency from first try to answer, the answer modes, and each
service's resident memory (all its processes) after a warm-up and after the run (target: within
10 %). Beside it, the bare model: one ``generate`` call of the same size, no service around it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests
from tqdm import tqdm

from bench.report import machine_line, write_section
from generator_service.config import load_config as load_generator_config
from qa_common.process import REPO_ROOT, ServiceProcess
from qa_common.retriever_client import RetrieverClient

SECTION = "load"
DEFAULT_DATASET = REPO_ROOT.parent / "shared" / "eval" / "xquad-en"
INTERNAL_KEY = "load-bench-internal-key"
MODEL = "smollm2-135m-instruct"
# Enough for every service to reach its working size (the retriever's grows for a while).
WARM_UP_QUESTIONS = 300
# Seconds between two memory samples during the run.
MEMORY_SAMPLE_S = 20.0
MAX_TRIES = 50
SEED = 2026


@dataclass(frozen=True)
class Outcome:
    status: int
    seconds: float
    tries: int
    shed: int
    shed_without_retry_after: int
    mode: str | None
    degraded: tuple[str, ...]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def memory_mb(service: ServiceProcess) -> float:
    """Resident memory of a service: its gunicorn master and every worker."""
    assert service.process is not None
    root = psutil.Process(service.process.pid)
    processes = [root, *root.children(recursive=True)]
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def ask(session: requests.Session, url: str, question: str) -> Outcome:
    """Ask until answered, waiting out each 429's Retry-After."""
    started = time.perf_counter()
    shed = missing = 0
    for tries in range(1, MAX_TRIES + 1):
        try:
            response = session.post(f"{url}/v1/ask", json={"question": question}, timeout=120)
        except requests.RequestException:
            return Outcome(0, time.perf_counter() - started, tries, shed, missing, None, ())
        if response.status_code != 429:
            body = response.json() if response.status_code == 200 else {}
            return Outcome(
                response.status_code,
                time.perf_counter() - started,
                tries,
                shed,
                missing,
                body.get("mode"),
                tuple(body.get("degraded") or ()),
            )
        shed += 1
        retry_after = response.headers.get("Retry-After")
        if retry_after is None:
            missing += 1
        # A little jitter, so that the clients shed together do not come back together.
        time.sleep(float(retry_after or 1) * random.uniform(0.5, 1.5))
    return Outcome(429, time.perf_counter() - started, MAX_TRIES, shed, missing, None, ())


def ask_all(url: str, questions: Sequence[str], concurrency: int, desc: str) -> list[Outcome]:
    local = threading.local()

    def one(question: str) -> Outcome:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return ask(local.session, url, question)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(tqdm(pool.map(one, questions), total=len(questions), desc=desc, unit="q"))


def bare_generate_seconds(max_new_tokens: int, rounds: int = 5) -> float:
    """Median seconds of one greedy ``generate`` of SmolLM2 alone, a RAG-sized prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from generator_service.model_sources import resolve_model

    source = resolve_model(MODEL).source
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    context = " ".join(["The committee met in the spring and decided on the new budget."] * 30)
    messages = [{"role": "user", "content": f"{context}\n\nQuestion: When did it meet?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    times = []
    with torch.inference_mode():
        for _ in range(rounds):
            started = time.perf_counter()
            model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def render(figures: dict[str, Any]) -> str:
    outcomes: list[Outcome] = figures["outcomes"]
    statuses = Counter(o.status for o in outcomes)
    total = len(outcomes)
    answered = statuses.get(200, 0)
    server_errors = sum(n for status, n in statuses.items() if status >= 500 or status == 0)
    shed = sum(o.shed for o in outcomes)
    missing = sum(o.shed_without_retry_after for o in outcomes)
    seconds = [o.seconds for o in outcomes if o.status == 200]
    modes = Counter(o.mode for o in outcomes if o.status == 200)
    degraded = Counter(d for o in outcomes for d in o.degraded)
    first_try = sum(1 for o in outcomes if o.status == 200 and o.tries == 1)
    tries = [o.tries for o in outcomes if o.status == 200]
    lines = [
        "## The whole system under load (`python -m bench.load_bench`)",
        "",
        f"{total:,} XQuAD-en questions through `POST /v1/ask` from {figures['concurrency']} "
        "clients at once, against the three services as shipped (gunicorn, default settings, "
        "embedded Chroma with XQuAD's paragraphs, the generator serving the bundled "
        "SmolLM2-135M-Instruct on CPU). A client given 429 waits its `Retry-After` and asks "
        f"again. Run time {figures['run_s']:.0f} s ({total / figures['run_s']:.2f} answers/s).",
        "",
        "| | figure | target |",
        "|---|---|---|",
        f"| answered 200 | {answered:,} of {total:,} ({answered / total:.1%}) | ≥ 95 % |",
        f"| answered 200 on the first try (no 429 first) | {first_try:,} of {total:,} "
        f"({first_try / total:.1%}) | |",
        f"| tries per answered question, median / p95 / max | {percentile(tries, 0.5)} / "
        f"{percentile(tries, 0.95)} / {max(tries, default=0)} | |",
        f"| given up after {MAX_TRIES} tries, all 429 | {statuses.get(429, 0)} | |",
        f"| 5xx or no answer | {server_errors} | 0 |",
        f"| statuses | {', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))} | |",
        f"| 429s on the way (retried) | {shed:,}, {missing} without `Retry-After` | every one "
        "carries it |",
        f"| latency first try → answer, p50 / p95 / p99 | {percentile(seconds, 0.5):.2f} / "
        f"{percentile(seconds, 0.95):.2f} / {percentile(seconds, 0.99):.2f} s | |",
        f"| answer modes | {', '.join(f'{m}: {n}' for m, n in modes.most_common())} | |",
        f"| degraded answers, by reason | "
        f"{', '.join(f'{d}: {n}' for d, n in degraded.most_common()) or 'none'} | |",
        "",
        "Resident memory of each service (all its processes), after a warm-up of "
        f"{figures['warm_up']} questions and after the run (target: within 10 %):",
        "",
        "| service | after warm-up MB | during the run (every "
        f"{MEMORY_SAMPLE_S:.0f} s): min / max MB | after the run MB | change |",
        "|---|---|---|---|---|",
    ]
    for name, (before, after) in figures["memory"].items():
        during = figures["memory_samples"][name] or [after]
        lines.append(
            f"| {name} | {before:.0f} | {min(during):.0f} / {max(during):.0f} | {after:.0f} | "
            f"{after / before - 1:+.1%} |"
        )
    bare = figures.get("bare_generate_s")
    if bare is not None:
        lines += [
            "",
            f"Bare model, for scale: one greedy `generate` of {figures['max_new_tokens']} new "
            f"tokens on a RAG-sized prompt, SmolLM2 in transformers alone, takes {bare:.2f} s "
            f"(median of 5), so one generator process alone answers at most ~{1 / bare:.1f} "
            "questions/s unbatched; the gateway answers extractively when the generator is past "
            "the deadline.",
        ]
    lines += ["", machine_line()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", nargs="?", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--questions", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--skip-bare", action="store_true", help="do not time the bare model")
    args = parser.parse_args(argv)

    corpus = read_jsonl(args.dataset / "corpus.jsonl")
    queries = [q["text"] for q in read_jsonl(args.dataset / "queries.jsonl")]
    rng = random.Random(SEED)
    order = [queries[i % len(queries)] for i in range(args.questions)]
    rng.shuffle(order)

    root = Path(tempfile.mkdtemp(prefix="load-bench-"))
    common = {"HF_HUB_OFFLINE": "1", "INTERNAL_API_KEY": INTERNAL_KEY, "LOG_LEVEL": "WARNING"}
    retriever = ServiceProcess(
        "retriever_service",
        env={**common, "CHROMA_PATH": str(root / "chroma")},
        log_path=root / "retriever.log",
    )
    generator = ServiceProcess(
        "generator_service", env={**common, "GENERATOR_MODEL": MODEL}, log_path=root / "gen.log"
    )
    gateway = ServiceProcess(
        "gateway",
        env={**common, "RETRIEVER_URL": retriever.url, "GENERATOR_URL": generator.url},
        log_path=root / "gateway.log",
    )
    services = {"gateway": gateway, "retriever": retriever, "generator": generator}
    try:
        retriever.start()
        generator.start()
        retriever.wait_ready(timeout_s=300)
        client = RetrieverClient(retriever.url, api_key=INTERNAL_KEY, read_timeout_s=300)
        documents = [
            {"id": d["_id"], "text": (f"{d['title']}\n\n" if d.get("title") else "") + d["text"]}
            for d in corpus
        ]
        for first in range(0, len(documents), 64):
            client.ingest(documents[first : first + 64])
        generator.wait_ready(timeout_s=600)
        gateway.start()
        gateway.wait_ready(timeout_s=120)
        warm_up = order[: min(WARM_UP_QUESTIONS, len(order))]
        ask_all(gateway.url, warm_up, args.concurrency, "warm-up")
        before = {name: memory_mb(s) for name, s in services.items()}
        samples: dict[str, list[float]] = {name: [] for name in services}
        running = threading.Event()
        running.set()

        def sample() -> None:
            while running.is_set():
                for name, service in services.items():
                    samples[name].append(memory_mb(service))
                time.sleep(MEMORY_SAMPLE_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        outcomes = ask_all(gateway.url, order, args.concurrency, "load")
        run_s = time.perf_counter() - started
        running.clear()
        sampler.join(timeout=60)
        after = {name: memory_mb(s) for name, s in services.items()}
    finally:
        for service in services.values():
            service.stop()
    # The gateway leaves the answer length to the generator's default.
    max_new_tokens = load_generator_config().generator_max_new_tokens
    figures: dict[str, Any] = {
        "outcomes": outcomes,
        "warm_up": len(warm_up),
        "concurrency": args.concurrency,
        "run_s": run_s,
        "memory": {name: (before[name], after[name]) for name in services},
        "memory_samples": samples,
        "max_new_tokens": max_new_tokens,
    }
    if not args.skip_bare:
        figures["bare_generate_s"] = bare_generate_seconds(max_new_tokens)
    markdown = render(figures)
    print(markdown)
    if args.write_docs:
        write_section(SECTION, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
