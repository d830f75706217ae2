"""Render an evaluation's figures for the terminal: the modes side by side, and the sweep."""

from __future__ import annotations

from retriever_service.evaluation.metrics import METRIC_KEYS
from retriever_service.evaluation.runner import EvalResult, ModeResult

# Published figures to compare against, keyed by dataset folder name and model. Source:
# github.com/embeddings-benchmark/results, sentence-transformers__all-MiniLM-L6-v2,
# XQuADRetrieval.json (en), as quoted in ../shared/eval/README.md. They are dense retrieval
# over all queries, so only the dense row of an "all" run is held against them.
REFERENCE_FIGURES: dict[tuple[str, str], dict[str, float]] = {
    ("xquad-en", "sentence-transformers/all-MiniLM-L6-v2"): {
        "ndcg@10": 0.9436,
        "recall@1": 0.8852,
        "recall@5": 0.9814,
        "recall@10": 0.9899,
        "mrr@10": 0.9281,
    },
}
REFERENCE_SOURCE = "MTEB XQuADRetrieval (en), embeddings-benchmark/results"
REFERENCE_MODE = "dense"
# The bar: a correct pipeline lands this close to the published figures.
REFERENCE_TOLERANCE = 0.02


def reference_for(dataset: str, model: object) -> dict[str, float] | None:
    """Return the published figures for this dataset and model, when known."""
    return REFERENCE_FIGURES.get((dataset, str(model)))


def _comparable_reference(result: EvalResult) -> tuple[ModeResult, dict[str, float]] | None:
    reference = reference_for(result.dataset, result.settings.get("model"))
    if reference is None or result.query_split != "all":
        return None
    dense = next((r for r in result.runs if r.label == REFERENCE_MODE), None)
    return (dense, reference) if dense else None


def describe_queries(result: EvalResult) -> str:
    """Say which queries were searched: all judged ones, or which half of them."""
    if result.query_split == "all":
        return f"all {result.queries} judged queries"
    return (
        f"{result.query_split} half: {result.queries} of {result.judged_queries} judged queries "
        f"(split seed {result.split_seed!r})"
    )


def _row(label: str, metrics: dict[str, float], latency: str, width: int) -> str:
    cells = "".join(f"{metrics[key]:>{len(key) + 2}.4f}" for key in METRIC_KEYS)
    return f"{label:<{width}}{cells}{latency}"


def render(result: EvalResult) -> str:
    """Format one run's figures for the terminal, one row per search setting."""
    s = result.settings
    lines = [
        f"dataset:    {result.dataset} ({result.documents} documents -> {result.chunks} chunks, "
        f"judgements qrels/{result.qrels})",
        f"queries:    {describe_queries(result)}",
        f"model:      {s.get('model')} ({s.get('dtype')}), chunks <= "
        f"{s.get('max_chunk_tokens')} tokens, overlap {s.get('chunk_overlap_tokens')}",
        f"ingestion:  {result.ingest_s:.1f}s into collection {result.collection}",
    ]
    if not result.runs:
        return "\n".join(lines)
    compared = _comparable_reference(result)
    labels = [r.label for r in result.runs] + (["published (dense)"] if compared else [])
    width = max(len(label) for label in labels) + 2
    lines += [
        "",
        f"{'mode':<{width}}"
        + "".join(f"{key:>{len(key) + 2}}" for key in METRIC_KEYS)
        + f"{'p50 ms':>9}{'p99 ms':>9}",
    ]
    for run in result.runs:
        latency = f"{run.latency_p50_ms:>9.1f}{run.latency_p99_ms:>9.1f}"
        lines.append(_row(run.label, run.metrics, latency, width))
    if compared:
        dense, reference = compared
        lines.append(_row("published (dense)", reference, "", width))
        worst = max(abs(dense.metrics[k] - reference[k]) for k in METRIC_KEYS)
        verdict = "within" if worst <= REFERENCE_TOLERANCE else "NOT within"
        lines += [
            "",
            f"dense vs published ({REFERENCE_SOURCE}): largest difference {worst:.4f} "
            f"({verdict} {REFERENCE_TOLERANCE})",
        ]
    lines += [
        "",
        "latency: client-measured, one query at a time, the modes taking turns on each query; "
        "server p50 ms: " + ", ".join(f"{r.label} {r.server_p50_ms:.1f}" for r in result.runs),
    ]
    return "\n".join(lines)


def best_sweep_setting(sweep: list[ModeResult]) -> ModeResult | None:
    """Return the sweep setting with the highest nDCG@10 (the first of equals)."""
    return max(sweep, key=lambda r: r.metrics["ndcg@10"]) if sweep else None


def render_sweep(result: EvalResult) -> str:
    """Format the hybrid sweep: nDCG@10 per fusion (rows) and dense weight (columns)."""
    if not result.sweep:
        return ""
    weights = sorted({r.dense_weight for r in result.sweep if r.dense_weight is not None})
    fusions = list(dict.fromkeys(r.fusion for r in result.sweep))
    by_setting = {(r.fusion, r.dense_weight): r for r in result.sweep}
    lines = [
        f"hybrid sweep: nDCG@10 on {describe_queries(result)}",
        f"{'fusion':<10}" + "".join(f"{f'w={w:g}':>8}" for w in weights),
    ]
    for fusion in fusions:
        cells = "".join(
            f"{by_setting[(fusion, w)].metrics['ndcg@10']:>8.4f}"
            if (fusion, w) in by_setting
            else f"{'—':>8}"
            for w in weights
        )
        lines.append(f"{fusion!s:<10}{cells}")
    best = best_sweep_setting(result.sweep)
    if best is not None:
        lines.append(
            f"best: fusion {best.fusion}, dense_weight {best.dense_weight:g} "
            f"(nDCG@10 {best.metrics['ndcg@10']:.4f})"
        )
    return "\n".join(lines)
