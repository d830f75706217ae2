"""Build a tiny GPT-2 with random weights and a tokenizer trained on ``data/``, for tests.

Usage: ``python -m generator_service.tiny_model OUT_DIR [--data DIR] [--layers N] ...``

The result is an ordinary ``save_pretrained`` directory (safetensors, no custom code), so it loads
through exactly the same ``AutoTokenizer`` / ``AutoModelForCausalLM`` path as DialoGPT.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

EOS_TOKEN = "<|endoftext|>"  # noqa: S105 - GPT-2's and DialoGPT's one special token
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
_TEXT_SUFFIXES = {".txt", ".md", ".csv", ".json", ".jsonl"}


def iter_corpus(data_dir: Path) -> Iterator[str]:
    """Yield the lines of every text file under ``data_dir``, in a stable order."""
    for path in sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in _TEXT_SUFFIXES):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.strip():
                yield line


def train_tokenizer(data_dir: Path, vocab_size: int):  # -> PreTrainedTokenizerFast
    """Train a byte-level BPE tokenizer (GPT-2's scheme) on the text files of ``data_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    lines = list(iter_corpus(data_dir))
    if not lines:
        raise SystemExit(f"no text files found under {data_dir}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        model_max_length=1024,
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    data_dir: str | Path = DEFAULT_DATA_DIR,
    layers: int = 2,
    width: int = 64,
    heads: int = 4,
    context: int = 256,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a random-weight GPT-2 and its tokenizer to ``out_dir``; return the directory."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(Path(data_dir), vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        # Wider than GPT-2's 0.02 so that logits are peaked: greedy decoding then has clear
        # winners instead of near-ties that float noise between code paths could flip.
        initializer_range=0.3,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "tiny_model.json").write_text(
        json.dumps({"layers": layers, "width": width, "heads": heads, "context": context}) + "\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and build the model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="text to train on")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=256, help="n_positions")
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = build_tiny_model(
        args.out_dir,
        data_dir=args.data,
        layers=args.layers,
        width=args.width,
        heads=args.heads,
        context=args.context,
        vocab_size=args.vocab_size,
        seed=args.seed,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
