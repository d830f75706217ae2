"""Answer quality of the whole pipeline on a BEIR/SQuAD-style dataset (default: XQuAD-en).

    python bench/answer_quality.py [DATASET_DIR] [--generator-url URL] [--write-docs]

1. Ingests every paragraph into a real retriever (gunicorn, temporary embedded Chroma), asks
   every question through the gateway, and counts answers that contain the gold answer text,
   per mode. Without ``--generator-url`` the generator is down, so answers are extractive.
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
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import machine_line, write_section  # noqa: E402
from gateway.answering import Source, relevance  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from qa_common.process import ServiceProcess, free_port  # noqa: E402
from retriever_service.client import RetrieverClient  # noqa: E402
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


def contains_gold(answer: str, golds: list[str]) -> bool:
    text = " ".join(answer.lower().split())
    return any(" ".join(g.lower().split()) in text for g in golds)


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
    parser.add_argument("--generator-url", help="a running generator; default: none (down)")
    parser.add_argument("--limit", type=int, help="ask only the first N questions")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    dataset = Path(args.dataset)
    corpus, queries, relevant = load_dataset(dataset)
    queries = [q for q in queries if q["_id"] in relevant][: args.limit]

    articles = sorted({article(d["_id"]) for d in corpus})
    kept_articles = set(articles[::2])
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
            generator_url = args.generator_url or f"http://127.0.0.1:{free_port()}"
            config = GatewayConfig(
                retriever_url=retriever.url,
                generator_url=generator_url,
                log_level="WARNING",
                connect_retries=0,
            )
            gateway = create_app(config).test_client()

            # 1. Every question against the full corpus.
            modes: Counter[str] = Counter()
            hits: Counter[str] = Counter()
            latencies = []
            for query in tqdm(queries, desc="ask (full corpus)", unit="q"):
                started = time.perf_counter()
                response = gateway.post(
                    "/v1/ask", json={"question": query["text"], "collection": "xquad-full"}
                )
                latencies.append((time.perf_counter() - started) * 1000)
                body = response.get_json()
                assert response.status_code == 200, body
                modes[body["mode"]] += 1
                if contains_gold(body["answer"], query["metadata"]["answers"]):
                    hits[body["mode"]] += 1

            # 2. Out-of-corpus detection: each question's relevance on half the corpus.
            def scores(question: str, collection: str) -> tuple[float, float]:
                hits = client.search(question, top_k=3, collection=collection)["results"]
                sources = [
                    Source(h["document_id"], h["chunk_id"], h["text"], h["score"], {}) for h in hits
                ]
                cosine = sources[0].score if sources else -1.0
                return relevance(question, sources, config.no_answer_lexical_weight), cosine

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
        finally:
            retriever.stop()

    total = len(queries)
    threshold = config.no_answer_min_relevance
    weight = config.no_answer_lexical_weight
    generator_state = f"at {args.generator_url}" if args.generator_url else "down (extractive only)"
    lines = [
        f"Dataset `{dataset.name}`: {len(corpus)} paragraphs, {total} questions. {machine_line()}",
        "",
        "### Answers containing the gold text (whole corpus ingested)",
        "",
        f"Generator: {generator_state}; "
        f"`NO_ANSWER_MIN_RELEVANCE` = {threshold}. Median /v1/ask latency "
        f"{np.percentile(latencies, 50):.0f} ms (p99 {np.percentile(latencies, 99):.0f} ms).",
        "",
        "| mode | answers | share of all | contain gold text |",
        "|---|---:|---:|---:|",
    ]
    for mode in ("generated", "extractive", "no_answer"):
        count = modes[mode]
        rate = f"{hits[mode] / count:.1%}" if count else "–"
        lines.append(f"| {mode} | {count} | {count / total:.1%} | {rate} |")
    lines.append(f"| **all** | {total} | 100% | **{sum(hits.values()) / total:.1%}** |")
    in_arr, out_arr = np.array(in_scores), np.array(out_scores)
    lines += [
        "",
        "### Choosing the no-answer threshold (half of the articles ingested)",
        "",
        f"{len(kept_articles)} of {len(articles)} articles ingested; {len(in_arr)} questions are "
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


if __name__ == "__main__":
    sys.exit(main())
