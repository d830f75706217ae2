"""Answer quality before and after fine-tuning, through the whole gateway.

    python -m bench.finetune_quality --model DIR [--base smollm2-135m-instruct]
        [--sample 150] [--seed 13] [--heldout-docs FILE] [--write-docs]

One real retriever (gunicorn, temporary embedded Chroma) holds XQuAD-en whole, XQuAD's even
articles, and data/. For the base model and then the fine-tuned one, a real generator starts
under gunicorn and the gateway (in process, its defaults) answers:
- a seeded sample of XQuAD questions on the whole corpus: answers ``generated``, generated and
  containing the gold text, SQuAD token F1, generated but lacking the gold (wrong-generated);
- XQuAD questions about the odd articles, asked of the even half: out of the corpus, refused?
- data/'s paraphrased questions (tests/fixtures/sample_questions.json) about the documents in
  ``--heldout-docs`` (a JSON list of document ids the fine-tune did not train on), and its
  off-topic questions.
XQuAD is the evaluation set only: the fine-tune must not have seen SQuAD data.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.answer_quality import (  # noqa: E402
    SAMPLE_QUESTIONS,
    article,
    ask_all,
    contains_gold,
    ingest,
    load_dataset,
    start_generator,
    stored_articles,
    token_f1,
)
from bench.report import machine_line, write_section  # noqa: E402
from gateway.app import create_app  # noqa: E402
from gateway.config import GatewayConfig  # noqa: E402
from qa_common.process import ServiceProcess  # noqa: E402
from qa_common.retriever_client import RetrieverClient  # noqa: E402
from retriever_service.ingest import IngestSummary, collect  # noqa: E402

SECTION = "finetune-quality"


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "–"


def xquad_figures(queries: list[dict], answered: list[tuple[dict, float]]) -> dict[str, Any]:
    """Count generated answers, gold containment, F1 and wrong-generated answers."""
    generated = gold = generated_gold = 0
    f1 = 0.0
    for query, (body, _) in zip(queries, answered, strict=True):
        golds = query["metadata"]["answers"]
        hit = contains_gold(body["answer"], golds)
        gold += hit
        f1 += token_f1(body["answer"], golds)
        if body["mode"] == "generated":
            generated += 1
            generated_gold += hit
    return {
        "questions": len(queries),
        "generated": generated,
        "generated_gold": generated_gold,
        "wrong_generated": generated - generated_gold,
        "gold": gold,
        "f1": round(f1 / max(len(queries), 1), 4),
    }


def data_figures(
    answerable: list[dict], answered: list[tuple[dict, float]], off_topic: list[tuple[dict, float]]
) -> dict[str, Any]:
    """Score data/'s held-out questions: the expected text present, and refusals off topic."""
    correct = generated = generated_correct = 0
    for question, (body, _) in zip(answerable, answered, strict=True):
        hit = question["answer_contains"].lower() in body["answer"].lower()
        correct += hit
        if body["mode"] == "generated":
            generated += 1
            generated_correct += hit
    return {
        "answerable": len(answerable),
        "correct": correct,
        "generated": generated,
        "generated_correct": generated_correct,
        "off_topic": len(off_topic),
        "off_topic_refused": sum(body["mode"] == "no_answer" for body, _ in off_topic),
    }


def _declined(body: dict) -> bool:
    return (body.get("grounding") or {}).get("reason") == "declined"


def measure(
    model: str,
    root: Path,
    config: GatewayConfig,
    questions: dict[str, list[dict]],
    concurrency: int,
) -> dict[str, Any]:
    """Serve ``model`` and ask every question set through the gateway."""
    generator = start_generator(model, root)
    try:
        gateway = create_app(config.model_copy(update={"generator_url": generator.url}))
        xquad = ask_all(gateway, questions["xquad"], "xquad-full", concurrency, f"{model}: xquad")
        # What a declined answer would have been with HONOR_GENERATOR_DECLINE=false: the
        # extractive answer, which is what a gateway without a generator gives.
        extractive = create_app(config.model_copy(update={"generator_url": "http://127.0.0.1:9"}))
        declined = [i for i, (body, _) in enumerate(xquad) if _declined(body)]
        redone = (
            ask_all(
                extractive,
                [questions["xquad"][i] for i in declined],
                "xquad-full",
                concurrency,
                f"{model}: declined, extractive",
            )
            if declined
            else []
        )
        ignoring = list(xquad)
        for index, answer in zip(declined, redone, strict=True):
            ignoring[index] = answer
        outside = ask_all(
            gateway, questions["outside"], "xquad-half", concurrency, f"{model}: out of corpus"
        )
        answerable = [{"text": q["question"]} for q in questions["data"]]
        data_up = ask_all(gateway, answerable, "sample", concurrency, f"{model}: data/")
        off = [{"text": q} for q in questions["off_topic"]]
        off_up = ask_all(gateway, off, "sample", concurrency, f"{model}: off topic")
    finally:
        generator.stop()
    return {
        "model": model,
        "xquad": xquad_figures(questions["xquad"], xquad),
        "xquad_declines_ignored": xquad_figures(questions["xquad"], ignoring),
        "outside": {
            "questions": len(outside),
            "refused": sum(body["mode"] == "no_answer" for body, _ in outside),
            "generated": sum(body["mode"] == "generated" for body, _ in outside),
        },
        "data": data_figures(questions["data"], data_up, off_up),
        "declined": sum(_declined(body) for body, _ in [*xquad, *outside, *data_up]),
    }


def _ignoring(result: dict[str, Any]) -> str:
    figures = result["xquad_declines_ignored"]
    return (
        f"{result['label']}: all with gold {_share(figures['gold'], figures['questions'])}, "
        f"token F1 {figures['f1']:.3f}"
    )


def render(results: list[dict[str, Any]], args: argparse.Namespace, card: dict[str, Any]) -> str:
    """Render the before/after tables."""
    xquad_n = results[0]["xquad"]["questions"]
    lines = [
        f"XQuAD-en: a seeded sample of {xquad_n} questions (seed {args.seed}) on the whole "
        f"corpus; {results[0]['outside']['questions']} questions about articles not stored "
        f"(asked of the even articles only); data/: the {results[0]['data']['answerable']} "
        "paraphrased questions about documents the fine-tune did not train on, and "
        f"{results[0]['data']['off_topic']} off-topic ones. Gateway defaults (hybrid search, "
        "the no-answer gate, grounding with `GROUNDING_TOP_SENTENCES=2`, declines honoured); "
        f"each model served by the real generator under gunicorn, float32. {machine_line()}",
        "",
        f"Fine-tuned model: {card['settings']['method']}, {card['training']['steps']} steps of "
        f"{card['settings']['batch_size']} (learning rate {card['settings']['learning_rate']}, "
        f"{card['settings']['max_seq_tokens']} tokens), {card['examples']['train']} training "
        f"examples ({card['examples']['answer']} answers, {card['examples']['refusal']} "
        "refusals) from "
        + ", ".join(f"`{Path(d['path']).name}` ({d['records']})" for d in card["data"])
        + f"; trained in {card['training']['seconds'] / 60:.1f} min on this machine.",
        "",
        "| model | XQuAD generated | generated with gold (share of all) | generated lacking "
        "gold | all with gold | token F1 | out of corpus refused | data/ correct | data/ "
        "generated (correct) | data/ off topic refused | declines |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        x, o, d = result["xquad"], result["outside"], result["data"]
        lines.append(
            f"| {result['label']} | {_share(x['generated'], x['questions'])} | "
            f"{_share(x['generated_gold'], x['questions'])} | "
            f"{x['wrong_generated']} of {x['generated']} "
            f"({_share(x['wrong_generated'], x['generated'])}) | "
            f"{_share(x['gold'], x['questions'])} | {x['f1']:.3f} | "
            f"{_share(o['refused'], o['questions'])} | "
            f"{_share(d['correct'], d['answerable'])} | "
            f"{d['generated']} ({d['generated_correct']}) | "
            f"{_share(d['off_topic_refused'], d['off_topic'])} | {result['declined']} |"
        )
    lines += [
        "",
        "With `HONOR_GENERATOR_DECLINE=false` (a declined answer replaced by the extractive one): "
        + "; ".join(_ignoring(r) for r in results)
        + ".",
    ]
    before, after = results[0]["xquad"], results[-1]["xquad"]
    ratio = (
        f"{after['generated_gold'] / before['generated_gold']:.2f}×"
        if before["generated_gold"]
        else f"{after['generated_gold']} against 0"
    )
    wrong = _share(after["wrong_generated"], after["generated"])
    lines += [
        "",
        f"Target: generated with gold ≥ 1.5× the base model's ({ratio}), generated lacking gold "
        f"≤ 5 % ({wrong}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure the base and the fine-tuned model; print, and write docs when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the fine-tuned model directory")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default=str(ROOT.parent / "shared/eval/xquad-en"))
    parser.add_argument("--sample", type=int, default=150)
    parser.add_argument("--outside", type=int, default=60, help="out-of-corpus questions")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--heldout-docs",
        type=Path,
        help="JSON list of data/ document ids not trained on (default: every document)",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)

    corpus, queries, relevant = load_dataset(Path(args.dataset))
    queries = [q for q in queries if q["_id"] in relevant]
    rng = random.Random(args.seed)
    sample = sorted(rng.sample(queries, args.sample), key=lambda q: q["_id"])
    kept = stored_articles(corpus)
    half = [d for d in corpus if article(d["_id"]) in kept]
    not_stored = [q for q in queries if article(relevant[q["_id"]]) not in kept]
    outside = sorted(rng.sample(not_stored, args.outside), key=lambda q: q["_id"])
    sample_questions = json.loads(SAMPLE_QUESTIONS.read_text())
    held = set(json.loads(args.heldout_docs.read_text())) if args.heldout_docs else None
    data_questions = [
        q for q in sample_questions["answerable"] if held is None or q["document_id"] in held
    ]
    questions = {
        "xquad": sample,
        "outside": outside,
        "data": data_questions,
        "off_topic": sample_questions["unanswerable"],
    }
    card = json.loads((Path(args.model) / "finetune.json").read_text())

    results = []
    with tempfile.TemporaryDirectory() as state:
        root = Path(state)
        retriever = ServiceProcess(
            "retriever_service",
            env={"CHROMA_PATH": str(root / "chroma"), "HF_HUB_OFFLINE": "1"},
            log_path=root / "retriever.log",
        ).start()
        try:
            retriever.wait_ready()
            client = RetrieverClient(retriever.url)
            ingest(client, corpus, "xquad-full")
            ingest(client, half, "xquad-half")
            documents = collect([str(ROOT / "data")], IngestSummary())
            client.ingest([d.as_payload() for d in documents], "sample")
            config = GatewayConfig(
                retriever_url=retriever.url,
                log_level="ERROR",
                connect_retries=0,
                retriever_read_timeout_s=60,
                generator_read_timeout_s=120,
            )
            for label, model in (("base", args.base), ("fine-tuned", str(args.model))):
                result = measure(model, root, config, questions, args.concurrency)
                result["label"] = f"{label}: `{Path(model).name}`"
                results.append(result)
                print(json.dumps(result))
        finally:
            retriever.stop()
    markdown = render(results, args, card)
    print(markdown)
    if args.write_docs:
        title = "## Fine-tuning: answers before and after (`python -m bench.finetune_quality`)"
        write_section(SECTION, f"{title}\n\n{markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
