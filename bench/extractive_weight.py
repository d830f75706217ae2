"""Choose how much the question's (rarity-weighted) words count when the gateway quotes a sentence.

    python -m bench.extractive_weight DATASET_DIR [DATASET_DIR ...] [--write-docs]

Each dataset's corpus goes into a real retriever (gunicorn, temporary embedded Chroma); every
question is retrieved and answered extractively by the gateway's own ``Answerer`` (as with the
generator down), once per candidate ``EXTRACTIVE_LEXICAL_WEIGHT`` and search mode. An answer counts
when it contains a gold answer text. The weight is chosen on the dev half of the first dataset
(the seeded query split the retrieval evaluation uses) and reported, unchanged, on the test
halves of every dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.report import machine_line, write_section
from gateway.answering import Answerer, _EmbeddingMemo
from gateway.clients import retriever_client
from gateway.config import GatewayConfig
from qa_common.process import ServiceProcess
from qa_common.retriever_client import RetrieverClient
from retriever_service.evaluation.dataset import SPLIT_SEED, load_dataset, query_half

WEIGHTS = (0.15, 0.3, 0.5, 0.75, 1.0)
# Dense search with the weight used before hybrid search is the baseline.
SETTINGS = (("dense", 0.15), *(("hybrid", w) for w in WEIGHTS))
SECTION = "extractive-weight"


def contains_gold(answer: str, golds: Sequence[str]) -> bool:
    """Return whether the answer holds any gold answer text (case-insensitive)."""
    text = answer.lower()
    return any(g.strip().lower() in text for g in golds if g.strip())


def gold_answers(folder: Path) -> dict[str, list[str]]:
    """Read each query's gold answer texts from queries.jsonl metadata."""
    answers = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                answers[str(record["_id"])] = list(record.get("metadata", {}).get("answers", []))
    return answers


def measure(
    retriever_url: str,
    folder: Path,
    collection: str,
    client: RetrieverClient,
    settings: Sequence[tuple[str, float]] = SETTINGS,
) -> dict[tuple[str, float, str], float]:
    """Return gold containment per (mode, weight, half) for one dataset.

    Each question is retrieved once per mode and its sentences embedded once; every weight then
    re-scores the same candidates through the gateway's own ``Answerer.extract``.
    """
    dataset = load_dataset(folder)
    golds = gold_answers(folder)
    documents = [{"id": i, "text": t} for i, t in dataset.corpus.items()]
    for first in range(0, len(documents), 32):
        client.ingest(documents[first : first + 32], collection)
    queries = [q for q in dataset.judged_queries if golds.get(q)]
    hits: dict[tuple[str, float, str], int] = dict.fromkeys(
        ((m, w, h) for m, w in settings for h in ("dev", "test")), 0
    )
    counts = {"dev": 0, "test": 0}
    for query_id in queries:
        counts[query_half(query_id)] += 1
    for mode in dict.fromkeys(m for m, _ in settings):
        weights = [w for m, w in settings if m == mode]
        retriever = retriever_client(_config(retriever_url, mode, weights[0]))
        # The generator is down: never called.
        answerers = {w: Answerer(retriever, None, _config(retriever_url, mode, w)) for w in weights}  # type: ignore[arg-type]
        first = answerers[weights[0]]
        for query_id in tqdm(queries, desc=f"{dataset.name} {mode}", unit="q"):
            found = first.retrieve(
                dataset.queries[query_id], [], first.config.default_top_k, collection
            )
            half = query_half(query_id)
            if found.relevance < first.config.no_answer_min_relevance:
                continue  # no_answer whatever the weight
            context = found.sources[: first.config.context_snippets]
            embed = _EmbeddingMemo(retriever)
            for weight, answerer in answerers.items():
                text, _ = answerer.extract(found.query, context, embed, found.term_weights)
                hits[(mode, weight, half)] += contains_gold(text, golds[query_id])
    return {key: hits[key] / max(counts[key[2]], 1) for key in hits}


def _config(retriever_url: str, mode: str, weight: float) -> GatewayConfig:
    return GatewayConfig(
        retriever_url=retriever_url,
        generator_url="http://127.0.0.1:9",  # never called
        search_mode=mode,
        extractive_lexical_weight=weight,
        log_level="WARNING",
    )


def render(per_dataset: dict[str, dict[tuple[str, float, str], float]], chosen: float) -> str:
    """Format the containment table, the chosen weight marked."""
    lines = [
        "## Extractive answers: weight of the question's rare words "
        "(`python -m bench.extractive_weight`)",
        "",
        "Share of answers containing the gold answer text, generator down (every answer is the "
        "extracted sentence and, when short, the next one). The question's words count by their "
        "IDF in the collection (from the retriever's `query_terms`; uniform in `dense` mode). "
        f"Query halves: seeded split `{SPLIT_SEED}`. The weight is chosen on the first "
        "dataset's dev half and reported unchanged on every test half.",
        "",
        "| dataset | mode | weight | dev | test |",
        "|---|---|---:|---:|---:|",
    ]
    for name, results in per_dataset.items():
        for mode, weight in SETTINGS:
            if (mode, weight, "dev") not in results:
                continue
            mark = " ← chosen" if weight == chosen and mode == "hybrid" else ""
            lines.append(
                f"| {name} | {mode} | {weight}{mark} | "
                f"{results[(mode, weight, 'dev')]:.1%} | {results[(mode, weight, 'test')]:.1%} |"
            )
    lines += ["", machine_line()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument(
        "--modes", default="dense,hybrid", help="search modes to measure (dense: weight 0.15 only)"
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    modes = set(args.modes.split(","))
    settings = [s for s in SETTINGS if s[0] in modes]
    per_dataset: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="extractive-weight-") as workdir:
        retriever = ServiceProcess(
            "retriever_service",
            env={"CHROMA_PATH": str(Path(workdir) / "chroma"), "LOG_LEVEL": "WARNING"},
            log_path=Path(workdir) / "retriever.log",
        )
        with retriever:
            retriever.wait_ready(timeout_s=300)
            client = RetrieverClient(retriever.url)
            for index, folder in enumerate(args.datasets):
                name = folder.resolve().name
                per_dataset[name] = measure(
                    retriever.url, folder, f"extractive-{index}", client, settings
                )
                # Each dataset's figures as soon as they exist: a long run may be cut short.
                print(
                    json.dumps(
                        {f"{name}|{k[0]}|{k[1]}|{k[2]}": v for k, v in per_dataset[name].items()}
                    ),
                    flush=True,
                )
    first = next(iter(per_dataset.values()))
    chosen = max(WEIGHTS, key=lambda w: (first[("hybrid", w, "dev")], -w))
    report = render(per_dataset, chosen)
    print(report)
    print(f"chosen on {next(iter(per_dataset))} dev (hybrid): {chosen}")
    if args.write_docs:
        write_section(SECTION, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
