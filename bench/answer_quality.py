"""Answer quality of the whole pipeline on a BEIR/SQuAD-style dataset (default: XQuAD-en).

    python bench/answer_quality.py [DATASET_DIR] [--generator smollm2-135m-instruct | URL]
        [--sample N] [--concurrency 4] [--skip-gate] [--write-docs]

1. Ingests every paragraph into a real retriever (gunicorn, temporary embedded Chroma), asks
   every question (or a seeded sample of them) through the gateway, with the generator down
   (extractive only) and, side by side, with the generator up: a model name starts a real
   generator under gunicorn (the bundled SmolLM2 by default), a URL uses a running one. Per mode
   it counts answers, those containing a gold answer text, SQuAD-style token F1, and the share
   of ``generated`` answers that lack the gold text (the check let a wrong answer through);
   then ``/v1/ask`` latency p50/p95 at concurrency 1 and 4 with the generator up.
2. Ingests the paragraphs of half of the articles into a second collection and asks every
   question: those about the other half are out of the corpus and should get ``no_answer``,
   while the in-corpus ones keep their answers. Prints both rates over a range of thresholds,
   for the gateway's relevance score and for the bare cosine score: the curves that
   ``NO_ANSWER_MIN_RELEVANCE`` is chosen from.
3. Checks the chosen threshold on other data: the sample knowledge base in data/ and its
   paraphrased and off-topic questions (tests/fixtures/sample_questions.json).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import string
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine_line, write_section  # noqa: E402
from gateway.answering import Source, gate_settings  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from gateway.gate import relevance  # noqa: E402
from qa_common.process import ServiceProcess, free_port  # noqa: E402
from qa_common.retriever_client import RetrieverClient  # noqa: E402
from retriever_service.ingest import IngestSummary, collect  # noqa: E402

SAMPLE_QUESTIONS = ROOT / "tests" / "fixtures" / "sample_questions.json"

THRESHOLDS = [round(0.3 + 0.02 * i, 3) for i in range(20)]


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_dataset(directory: Path) -> tuple[list[dict], list[dict], dict[str, str]]:
    corpus = read_jsonl(directory / "corpus.jsonl")
    queries = read_jsonl(directory / "queries.jsonl")
    qrels_file = sorted((directory / "qrels").glob("*.tsv"))[0]
    relevant: dict[str, str] = {}
    for line in qrels_file.read_text().splitlines()[1:]:
        query_id, corpus_id, *_ = line.split("\t")
        relevant[query_id] = corpus_id
    return corpus, queries, relevant


def article(corpus_id: str) -> str:
    return corpus_id.split("__p")[0]


def stored_articles(corpus: list[dict]) -> set[str]:
    """Return the articles of the stored half (every other one, in name order)."""
    return set(sorted({article(d["_id"]) for d in corpus})[::2])


def contains_gold(answer: str, golds: list[str]) -> bool:
    text = " ".join(answer.lower().split())
    return any(" ".join(g.lower().split()) in text for g in golds)


def _squad_tokens(text: str) -> list[str]:
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def token_f1(answer: str, golds: list[str]) -> float:
    """Return the SQuAD token F1 of an answer against its best gold answer."""
    best = 0.0
    predicted = _squad_tokens(answer)
    for gold in golds:
        expected = _squad_tokens(gold)
        common = sum((Counter(predicted) & Counter(expected)).values())
        if common:
            precision, recall = common / len(predicted), common / len(expected)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def ask_all(
    gateway: Any, queries: list[dict], collection: str, concurrency: int, desc: str
) -> list[tuple[dict, float]]:
    """Ask every question through the gateway app; return (body, ms) in question order."""

    def one(query: dict) -> tuple[dict, float]:
        started = time.perf_counter()
        response = gateway.test_client().post(
            "/v1/ask", json={"question": query["text"], "collection": collection}
        )
        body = response.get_json()
        assert response.status_code == 200, body
        return body, (time.perf_counter() - started) * 1000

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(tqdm(pool.map(one, queries), total=len(queries), desc=desc, unit="q"))


def mode_table(label: str, queries: list[dict], answered: list[tuple[dict, float]]) -> list[str]:
    """Per-mode counts, gold containment and token F1, and the wrong-generated rate."""
    modes: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    f1: Counter[str] = Counter()
    for query, (body, _) in zip(queries, answered, strict=True):
        golds = query["metadata"]["answers"]
        modes[body["mode"]] += 1
        hits[body["mode"]] += contains_gold(body["answer"], golds)
        f1[body["mode"]] += token_f1(body["answer"], golds)
    total = len(queries)
    lines = [
        f"**{label}**",
        "",
        "| mode | answers | share of all | contain gold text | token F1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in ("generated", "extractive", "no_answer"):
        count = modes[mode]
        rate = f"{hits[mode] / count:.1%}" if count else "–"
        mean_f1 = f"{f1[mode] / count:.3f}" if count else "–"
        lines.append(f"| {mode} | {count} | {count / total:.1%} | {rate} | {mean_f1} |")
    lines.append(
        f"| **all** | {total} | 100% | **{sum(hits.values()) / total:.1%}** | "
        f"{sum(f1.values()) / total:.3f} |"
    )
    generated = modes["generated"]
    wrong = generated - hits["generated"]
    lines += [
        "",
        f"Generated and containing the gold text: {hits['generated'] / total:.1%} of all answers"
        f" (target ≥ 25 %); generated but lacking it: "
        + (f"{wrong} of {generated} = {wrong / generated:.1%}" if generated else "none")
        + " (target ≤ 5 %).",
        "",
    ]
    return lines


def _support_rank(body: dict) -> int:
    ranks = [s.get("support_rank") for s in (body.get("grounding") or {}).get("sentences", [])]
    return max((r for r in ranks if r is not None), default=0)


def top_sentences_sweep(
    queries: list[dict], down: list[tuple[dict, float]], up: list[tuple[dict, float]]
) -> list[str]:
    """Report each GROUNDING_TOP_SENTENCES from answers checked without the rank rule."""
    lines = [
        "GROUNDING_TOP_SENTENCES, from the same answers (checked without the rank rule; an "
        "answer whose backing sentence ranks lower is the extractive one):",
        "",
        "| top sentences | generated | generated with gold | generated lacking gold "
        "| all with gold |",
        "|---:|---:|---:|---:|---:|",
    ]
    total = len(queries)
    for top in (1, 2, 3, 4, 5, 64):
        generated = with_gold = all_gold = 0
        for query, (up_body, _), (down_body, _) in zip(queries, up, down, strict=True):
            golds = query["metadata"]["answers"]
            body = up_body
            if up_body["mode"] == "generated" and _support_rank(up_body) >= top:
                body = down_body
            if body["mode"] == "generated":
                generated += 1
                with_gold += contains_gold(body["answer"], golds)
            all_gold += contains_gold(body["answer"], golds)
        lacking = generated - with_gold
        lines.append(
            f"| {top if top < 64 else 'no rule'} | {generated} ({generated / total:.1%}) | "
            f"{with_gold / total:.1%} of all | "
            + (f"{lacking} ({lacking / generated:.1%})" if generated else "–")
            + f" | {all_gold / total:.1%} |"
        )
    return [*lines, ""]


def start_generator(model: str, root: Path) -> ServiceProcess:
    """Start the real generator under gunicorn with a model name (one worker, as shipped)."""
    generator = ServiceProcess(
        "generator_service",
        env={"GENERATOR_MODEL": model, "HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING"},
        log_path=root / "generator.log",
    ).start()
    generator.wait_ready(timeout_s=600)
    return generator


def ingest(client: RetrieverClient, corpus: list[dict], collection: str) -> None:
    docs = [
        {"id": d["_id"], "text": (f"{d['title']}\n\n" if d.get("title") else "") + d["text"]}
        for d in corpus
    ]
    for first in tqdm(range(0, len(docs), 64), desc=f"ingest {collection}", unit="batch"):
        client.ingest(docs[first : first + 64], collection)


def _cosine_threshold(out_scores: np.ndarray) -> float:
    """Return the lowest cosine threshold that turns away 90 % of out-of-corpus questions."""
    return next((t for t in THRESHOLDS if np.mean(out_scores < t) >= 0.9), THRESHOLDS[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", nargs="?", default=str(ROOT.parent / "shared/eval/xquad-en"))
    parser.add_argument(
        "--generator",
        default="smollm2-135m-instruct",
        help="a model name to serve (default: the bundled SmolLM2), a running generator's URL, "
        "or 'none' for the extractive answers only",
    )
    parser.add_argument("--sample", type=int, help="ask a seeded random sample of N questions")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--skip-gate", action="store_true", help="skip parts 2 and 3")
    parser.add_argument(
        "--sweep-top-sentences",
        action="store_true",
        help="check generated text without the rank rule and report GROUNDING_TOP_SENTENCES "
        "1..5 from the same answers (the rank rule turns a generated answer into the extractive "
        "one, which is the generator-down answer)",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    dataset = Path(args.dataset)
    corpus, queries, relevant = load_dataset(dataset)
    queries = [q for q in queries if q["_id"] in relevant]
    if args.sample:
        queries = sorted(
            random.Random(args.seed).sample(queries, args.sample), key=lambda q: q["_id"]
        )

    kept_articles = stored_articles(corpus)
    article_count = len({article(d["_id"]) for d in corpus})
    half = [d for d in corpus if article(d["_id"]) in kept_articles]

    with tempfile.TemporaryDirectory() as chroma_dir:
        retriever = ServiceProcess(
            "retriever_service",
            env={"CHROMA_PATH": chroma_dir},
            log_path=Path(chroma_dir) / "retriever.log",
        ).start()
        try:
            retriever.wait_ready()
            client = RetrieverClient(retriever.url)
            ingest(client, corpus, "xquad-full")
            ingest(client, half, "xquad-half")
            down_url = f"http://127.0.0.1:{free_port()}"
            config = GatewayConfig(
                retriever_url=retriever.url,
                generator_url=down_url,
                log_level="ERROR",
                connect_retries=0,
                # A loaded 2-core machine must not turn slow answers into failed ones.
                retriever_read_timeout_s=60,
                generator_read_timeout_s=120,
            )
            # 1. Every question against the full corpus, generator down, then up.
            gateway = create_app(config)
            down = ask_all(gateway, queries, "xquad-full", args.concurrency, "ask, generator down")
            up: list[tuple[dict, float]] = []
            latency: dict[int, list[float]] = {}
            generator: ServiceProcess | None = None
            if args.generator != "none":
                if args.generator.startswith("http"):
                    generator_url = args.generator
                else:
                    generator = start_generator(args.generator, Path(chroma_dir))
                    generator_url = generator.url
                try:
                    update: dict[str, Any] = {"generator_url": generator_url}
                    if args.sweep_top_sentences:
                        update["grounding_top_sentences"] = 64
                    gateway_up = create_app(config.model_copy(update=update))
                    up = ask_all(gateway_up, queries, "xquad-full", args.concurrency, "ask, up")
                    for concurrency in (1, 4):
                        timed = ask_all(
                            gateway_up,
                            queries[:40],
                            "xquad-full",
                            concurrency,
                            f"latency c={concurrency}",
                        )
                        latency[concurrency] = [ms for _, ms in timed]
                finally:
                    if generator is not None:
                        generator.stop()
            if args.skip_gate:
                raise _SkipGate

            # 2. Out-of-corpus detection: each question's relevance on half the corpus.
            def scores(question: str, collection: str) -> tuple[float, float]:
                found = client.search(question, top_k=3, collection=collection)
                hits = found["results"]
                sources = [
                    Source(h["document_id"], h["chunk_id"], h["text"], h["score"], {}) for h in hits
                ]
                cosine = sources[0].score if sources else -1.0
                score = relevance(
                    question,
                    sources,
                    found.get("query_terms"),
                    found.get("collection_chunks"),
                    gate_settings(config),
                )
                return score, cosine

            in_scores, out_scores = [], []
            for query in tqdm(queries, desc="search (half corpus)", unit="q"):
                in_corpus = article(relevant[query["_id"]]) in kept_articles
                (in_scores if in_corpus else out_scores).append(scores(query["text"], "xquad-half"))

            # 3. The sample knowledge base: other data, with questions written for it.
            sample_docs = collect([str(ROOT / "data")], IngestSummary())
            client.ingest([d.as_payload() for d in sample_docs], "sample")
            sample = json.loads(SAMPLE_QUESTIONS.read_text())
            sample_in = [scores(q["question"], "sample") for q in sample["answerable"]]
            sample_out = [scores(q, "sample") for q in sample["unanswerable"]]
        except _SkipGate:
            in_scores = out_scores = sample_in = sample_out = []
        finally:
            retriever.stop()

    total = len(queries)
    threshold = config.no_answer_min_relevance
    weight = config.no_answer_lexical_weight
    asked = f"a seeded sample of {total} (seed {args.seed})" if args.sample else f"all {total}"
    lines = [
        f"Dataset `{dataset.name}`: {len(corpus)} paragraphs, {asked} questions, "
        f"{args.concurrency} at a time. {machine_line()}",
        "",
        "### Answers containing the gold text (whole corpus ingested)",
        "",
        f"`NO_ANSWER_MIN_RELEVANCE` = {threshold}. Generator up: `{args.generator}` "
        "(served by the real generator under gunicorn, one worker, float32).",
        "",
        *mode_table("Generator down (extractive only)", queries, down),
    ]
    if up:
        lines += mode_table(f"Generator up ({args.generator})", queries, up)
        lines += [
            "| /v1/ask, generator up | p50 ms | p95 ms |",
            "|---|---:|---:|",
            *(
                f"| concurrency {c} ({len(ms)} questions) | {np.percentile(ms, 50):.0f} | "
                f"{np.percentile(ms, 95):.0f} |"
                for c, ms in latency.items()
            ),
            "",
        ]
        if args.sweep_top_sentences:
            lines += top_sentences_sweep(queries, down, up)
        reasons = Counter(
            (body.get("grounding") or {}).get("reason") for body, _ in up if body.get("grounding")
        )
        lines += [
            "Why generated text was set aside (grounding reason: answers): "
            + ", ".join(f"{r or 'supported'}: {n}" for r, n in reasons.most_common())
            + ".",
            "",
        ]
    if args.skip_gate:
        report = "\n".join(lines)
        print(report)
        if args.write_docs:
            write_section("answer-quality", "## Answer quality (gateway)\n\n" + report)
        return 0
    in_arr, out_arr = np.array(in_scores), np.array(out_scores)
    lines += [
        "",
        "### Choosing the no-answer threshold (half of the articles ingested)",
        "",
        f"{len(kept_articles)} of {article_count} articles ingested; {len(in_arr)} questions are "
        f"about them, {len(out_arr)} about the others. A question gets `no_answer` when its "
        f"relevance is below the threshold; relevance = best cosine + {weight} × share of the "
        "question's content words found in the top 3 snippets. The bare cosine is shown for "
        "comparison.",
        "",
        "| threshold | relevance: out-of-corpus → no_answer | relevance: in-corpus answered "
        "| cosine: out → no_answer | cosine: in answered |",
        "|---:|---:|---:|---:|---:|",
    ]
    for t in THRESHOLDS:
        mark = " ← default" if abs(t - threshold) < 1e-9 else ""
        lines.append(
            f"| {t:.2f}{mark} | {np.mean(out_arr[:, 0] < t):.1%} | "
            f"{np.mean(in_arr[:, 0] >= t):.1%} | {np.mean(out_arr[:, 1] < t):.1%} | "
            f"{np.mean(in_arr[:, 1] >= t):.1%} |"
        )
    s_in, s_out = np.array(sample_in), np.array(sample_out)
    cosine_cut = _cosine_threshold(out_arr[:, 1])
    lines += [
        "",
        f"Checked on other data, the sample knowledge base in `data/` at the default "
        f"threshold {threshold}: {np.mean(s_in[:, 0] >= threshold):.1%} of its "
        f"{len(s_in)} paraphrased questions are answered and "
        f"{np.mean(s_out[:, 0] < threshold):.1%} of its {len(s_out)} off-topic questions get "
        f"`no_answer`. For comparison, bare cosine at the lowest threshold that turns away 90 % "
        f"of xquad's out-of-corpus questions ({cosine_cut}) answers "
        f"{np.mean(s_in[:, 1] >= cosine_cut):.1%} of the sample questions.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write_docs:
        write_section("answer-quality", "## Answer quality (gateway)\n\n" + report)
    return 0


class _SkipGate(Exception):
    """Raised to skip the no-answer parts (``--skip-gate``)."""


if __name__ == "__main__":
    sys.exit(main())
