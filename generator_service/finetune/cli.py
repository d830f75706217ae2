"""``python -m generator_service.finetune``: fine-tune the answer writer on your questions.

Every example is the prompt the service itself builds (same template, same trimming) for a
question and its snippets, followed by the reference answer; refusal examples pair questions
with snippets that do not answer them and teach the service's decline sentence. A held-out
split is answered greedily through the served prompt before and after training. The output
directory is written all at once and serves as it is: ``GENERATOR_MODEL=DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from generator_service.finetune.data import SUFFIXES, DataError, read_records
from generator_service.model_sources import file_digest

log = logging.getLogger("generator_service.finetune")

DEFAULT_BASE = "smollm2-135m-instruct"
DEFAULT_LEARNING_RATE = {"full": 5e-5, "lora": 2e-4}


class FinetuneError(RuntimeError):
    """A run that cannot go on, with a reason the user can act on."""


def build_parser() -> argparse.ArgumentParser:
    """Return the command line's parser; every option shows in --help."""
    parser = argparse.ArgumentParser(
        prog="python -m generator_service.finetune",
        description=__doc__.splitlines()[0].split(": ", 1)[1],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        nargs="+",
        type=Path,
        required=True,
        metavar="PATH",
        help=f"question/answer files ({', '.join(SUFFIXES)}): columns or fields question, "
        "answer, optional context (a text or a list) and id; a JSON record with "
        '"unanswerable": true and a context is a refusal example',
    )
    data.add_argument(
        "--gateway",
        metavar="URL",
        help="a running gateway: questions without context get the snippets /v1/ask would use",
    )
    data.add_argument(
        "--api-key",
        default=os.environ.get("GATEWAY_API_KEY"),
        help="the gateway's ask key, if it needs one (default: $GATEWAY_API_KEY)",
    )
    data.add_argument("--collection", help="the gateway collection to retrieve from")
    data.add_argument("--top-k", type=int, help="sources retrieved per question (gateway's own)")
    data.add_argument(
        "--refusal-share",
        type=float,
        default=0.2,
        help="refusal examples made, as a share of the answer examples",
    )
    data.add_argument(
        "--eval-share", type=float, default=0.1, help="share of questions held out to evaluate"
    )
    data.add_argument(
        "--eval-max",
        type=int,
        default=100,
        help="held-out examples answered by generation before and after (each one is slow)",
    )
    data.add_argument(
        "--max-seq-tokens",
        type=int,
        default=512,
        help="prompt + answer tokens per example; longer prompts lose their last snippets",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--out", type=Path, required=True, help="directory to write the model to")
    model.add_argument(
        "--overwrite", action="store_true", help="replace --out if it holds something"
    )
    model.add_argument(
        "--base",
        default=DEFAULT_BASE,
        help="model to start from: a hub name, a directory, a .gguf file, or a bundled model",
    )
    model.add_argument("--revision", help="hub revision of --base")
    model.add_argument(
        "--template",
        default=os.environ.get("GENERATOR_PROMPT_TEMPLATE", "auto"),
        help="prompt template the model will be served with (GENERATOR_PROMPT_TEMPLATE)",
    )
    model.add_argument(
        "--cache-dir", type=Path, help="where a GGUF base is converted (GENERATOR_CACHE_DIR)"
    )
    training = parser.add_argument_group("training")
    training.add_argument("--method", choices=("full", "lora"), default="lora")
    length = training.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="passes over the training examples [3]")
    length.add_argument("--steps", type=int, help="optimizer steps (instead of --epochs)")
    training.add_argument(
        "--learning-rate",
        type=float,
        help="peak learning rate, linear warm-up and decay [full: 5e-5, lora: 2e-4]",
    )
    training.add_argument("--batch-size", type=int, default=4)
    training.add_argument("--warmup-share", type=float, default=0.05)
    training.add_argument("--seed", type=int, default=0, help="for the split, refusals, batches")
    training.add_argument(
        "--device", default="auto", help="cpu, cuda, cuda:N, or auto (a GPU when there is one)"
    )
    training.add_argument("--threads", type=int, default=0, help="CPU threads; 0: torch's own")
    training.add_argument("--lora-r", type=int, default=16, help="LoRA rank")
    training.add_argument("--lora-alpha", type=int, default=32, help="LoRA scaling numerator")
    training.add_argument("--lora-dropout", type=float, default=0.05)
    training.add_argument(
        "--lora-targets",
        default="all-linear",
        help="modules given adapters: all-linear, or comma-separated names (c_attn,q_proj,…)",
    )
    training.add_argument(
        "--no-eval-before", action="store_true", help="skip evaluating the base model"
    )
    training.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    checks = [
        (0 <= args.eval_share < 1, "--eval-share must be at least 0 and below 1"),
        (0 <= args.refusal_share <= 1, "--refusal-share must be between 0 and 1"),
        (args.epochs is None or args.epochs > 0, "--epochs must be above 0"),
        (args.steps is None or args.steps > 0, "--steps must be above 0"),
        (args.batch_size > 0, "--batch-size must be above 0"),
        (args.max_seq_tokens >= 32, "--max-seq-tokens must be at least 32"),
        (args.eval_max >= 0, "--eval-max must be at least 0"),
        (args.learning_rate is None or args.learning_rate > 0, "--learning-rate must be above 0"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise FinetuneError(f"--device {requested} was asked for, but no GPU is available")
    return requested


def check_causal_lm(source: str, revision: str | None) -> None:
    """Refuse a model that is not a causal LM (an encoder like MiniLM would load as one)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source, revision=revision)
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"cannot read the model configuration of {source}: {exc}") from None
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = list(getattr(config, "architectures", None) or [])
    if getattr(config, "is_encoder_decoder", False) or (
        architectures and not causal.intersection(architectures)
    ):
        named = ", ".join(architectures) or config.model_type
        raise FinetuneError(
            f"{source} is not a causal language model ({named}); fine-tuning needs one that "
            "writes text left to right, such as GPT-2, DialoGPT, Llama or SmolLM2"
        )


def _lora_targets(option: str) -> str | None:
    # peft takes "all-linear" as it is, and a list as one regular expression over module names.
    names = [n.strip() for n in option.split(",") if n.strip()]
    if not names:
        return None
    if names == ["all-linear"]:
        return "all-linear"
    return r".*\.(" + "|".join(map(re.escape, names)) + r")$"


def _base_record(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    from generator_service.model_sources import BUNDLED_MODELS

    bundled = BUNDLED_MODELS.get(args.base.strip().lower())
    weights = Path(loaded.source) / "model.safetensors"
    return {
        "name": args.base,
        "source": loaded.source,
        "revision": args.revision or getattr(loaded.model.config, "_commit_hash", None),
        "origin": loaded.origin,
        "origin_repo": bundled.repo if bundled else None,
        "weights_sha256": file_digest(weights) if weights.is_file() else None,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune as the arguments say; return the run's record."""
    from tqdm.auto import tqdm

    from generator_service.config import load_config
    from generator_service.finetune import contexts, examples, output, train
    from generator_service.finetune.evaluate import evaluate
    from generator_service.model import HFTokenCounter, chat_formatter, load_model
    from generator_service.model_sources import resolve_model
    from generator_service.pipeline import prompt_builder

    output.check_target(args.out, args.overwrite)
    records = read_records(args.data)
    device = _device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        config = load_config(generator_prompt_template=args.template)
    except ValueError as exc:
        raise FinetuneError(f"bad settings: {exc}") from None

    resolved = resolve_model(args.base, args.cache_dir)
    check_causal_lm(resolved.source, args.revision)
    log.info("loading %s", args.base)
    # From what was resolved above: resolving again would hash a GGUF base a second time.
    loaded = load_model(resolved.source, revision=args.revision, device=device)
    loaded = dataclasses.replace(loaded, name=str(args.out), origin=resolved.origin)
    counter = HFTokenCounter(loaded.tokenizer)
    chat_format = chat_formatter(loaded.tokenizer)
    try:
        builder = prompt_builder(
            config,
            counter=counter,
            context_tokens=min(args.max_seq_tokens, loaded.context_tokens),
            eos_token=loaded.eos_token,
            chat_format=chat_format,
        )
    except ValueError as exc:
        raise FinetuneError(str(exc)) from None

    client = contexts.GatewayContextClient(args.gateway, args.api_key) if args.gateway else None
    asking = sum(1 for r in records if not r.context) if client else 0
    quiet = not asking or args.no_progress
    with tqdm(total=asking, desc="snippets from the gateway", unit="q", disable=quiet) as bar:
        grounded = contexts.ground_records(
            records,
            client,
            top_k=args.top_k,
            collection=args.collection,
            on_progress=lambda: bar.update(1),
        )
    refusals = contexts.refusal_snippets(grounded, args.refusal_share, args.seed)
    made = examples.build_examples(grounded, refusals)
    train_examples, held_out = examples.split_examples(made, args.eval_share, args.seed)
    encoder = examples.ExampleEncoder(
        builder, counter, examples.end_of_turn_id(loaded.tokenizer), args.max_seq_tokens
    )
    train_encoded = [e for e in map(encoder.encode, train_examples) if e is not None]
    held_encoded = [e for e in map(encoder.encode, held_out) if e is not None]
    skipped = len(train_examples) + len(held_out) - len(train_encoded) - len(held_encoded)
    if not train_encoded:
        raise FinetuneError(
            f"no training example fits in --max-seq-tokens {args.max_seq_tokens} "
            f"({len(made)} made, {len(held_out)} of them held out)"
        )
    log.info(
        "%d training examples, %d held out, %d skipped as too long",
        len(train_encoded),
        len(held_encoded),
        skipped,
    )
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = loaded.eos_token_id if pad_id is None else int(pad_id)

    evaluation: dict[str, Any] = {}
    if held_encoded and not args.no_eval_before:
        log.info("evaluating the base model on %d held-out examples", len(held_encoded))
        before = evaluate(loaded, config, held_encoded, pad_id=pad_id, max_generated=args.eval_max)
        evaluation["before"] = before.to_dict()

    method = args.method
    steps = args.steps or train.steps_for(
        len(train_encoded), args.batch_size, args.epochs if args.epochs is not None else 3
    )
    settings = train.TrainSettings(
        method=method,
        steps=steps,
        learning_rate=args.learning_rate or DEFAULT_LEARNING_RATE[method],
        batch_size=args.batch_size,
        warmup_share=args.warmup_share,
        seed=args.seed,
        device=device,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout,
        lora_targets=_lora_targets(args.lora_targets),
    )
    model = train.prepare(loaded.model, settings)
    stats = train.train(
        model, train_encoded, settings, pad_id=pad_id, progress=not args.no_progress
    )
    merged = train.merge(model, settings)
    loaded = dataclasses.replace(loaded, model=merged)
    if held_encoded:
        after = evaluate(loaded, config, held_encoded, pad_id=pad_id, max_generated=args.eval_max)
        evaluation["after"] = after.to_dict()

    record = {
        "name": args.out.name,
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "base": _base_record(args, loaded),
        "data": [
            {
                "path": str(path),
                "sha256": file_digest(path),
                "records": sum(1 for r in records if r.file == str(path)),
            }
            for path in args.data
        ],
        "examples": {
            "train": len(train_encoded),
            "held_out": len(held_encoded),
            "answer": sum(1 for e in made if e.kind == "answer"),
            "refusal": sum(1 for e in made if e.kind == "refusal"),
            "skipped_too_long": skipped,
            "snippets_from": sorted({g.origin for g in grounded}),
            "gateway": args.gateway,
            "collection": args.collection,
        },
        "settings": {
            **dataclasses.asdict(settings),
            "epochs": args.epochs,
            "max_seq_tokens": args.max_seq_tokens,
            "eval_share": args.eval_share,
            "refusal_share": args.refusal_share,
            "prompt_template": builder.template.name,
        },
        "serve": {"model": str(args.out.resolve()), "prompt_template": builder.template.name},
        "evaluation": evaluation,
        "training": {k: v for k, v in dataclasses.asdict(stats).items() if k != "losses"},
        "losses": stats.losses,
    }

    def fill(directory: Path) -> None:
        merged.save_pretrained(directory, safe_serialization=True)
        loaded.tokenizer.save_pretrained(directory)
        output.write_record(directory, record)

    output.write_atomically(args.out, fill, args.overwrite)
    return record


def _summary(record: dict[str, Any]) -> str:
    lines = [f"wrote {record['serve']['model']}"]
    for phase in ("before", "after"):
        report = record["evaluation"].get(phase)
        if report:
            lines.append(
                f"  {phase}: held-out loss {report['loss']:.3f}, answers containing the "
                f"reference {report['contained']}/{report['answers']}, refusals declined "
                f"{report['declined']}/{report['refusals']}"
            )
    stats = record["training"]
    lines.append(
        f"  trained {stats['steps']} steps in {stats['seconds']:.0f} s "
        f"({stats['steps_per_s']:.3f} steps/s), peak memory {stats['peak_rss_mb']:.0f} MB"
    )
    lines.append(
        f"  serve it: GENERATOR_MODEL={record['serve']['model']} "
        f"GENERATOR_PROMPT_TEMPLATE={record['serve']['prompt_template']}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad data or settings exit with status 2 and one clear line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from generator_service.finetune.output import OutputExists
    from qa_common.errors import ServiceError

    try:
        record = run(args)
    except (DataError, FinetuneError, OutputExists, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ServiceError as exc:
        print(f"error: the gateway at {args.gateway} failed: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: nothing was written to {args.out}", file=sys.stderr)
        return 130
    print(_summary(record))
    print(json.dumps({"evaluation": record["evaluation"]}, indent=None))
    return 0
