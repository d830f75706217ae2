"""The training loop: full fine-tuning or LoRA (peft), on the CPU or a GPU, with a progress bar."""

from __future__ import annotations

import math
import random
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from generator_service.finetune.examples import IGNORE, Encoded

Method = Literal["full", "lora"]


@dataclass(frozen=True)
class TrainSettings:
    """How to train; every field is an option of the command line."""

    method: Method = "lora"
    steps: int = 100
    learning_rate: float = 2e-4
    batch_size: int = 4
    warmup_share: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    device: str = "cpu"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # None: peft's choice for the architecture (GPT-2: c_attn; Llama: q_proj, v_proj).
    lora_targets: str | None = "all-linear"


@dataclass
class TrainStats:
    """What a run did, for the model card and the benchmarks."""

    steps: int
    seconds: float
    steps_per_s: float
    tokens_per_s: float
    first_loss: float
    final_loss: float
    trainable_parameters: int
    total_parameters: int
    peak_rss_mb: float
    peak_gpu_mb: float | None = None
    losses: list[float] = field(default_factory=list)


def peak_rss_mb() -> float:
    """Return this process's peak resident memory so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def steps_for(examples: int, batch_size: int, epochs: float) -> int:
    """Return the optimizer steps that ``epochs`` passes over the examples take."""
    return max(1, math.ceil(math.ceil(examples / batch_size) * epochs))


def prepare(model: Any, settings: TrainSettings) -> Any:
    """Return the model to train: itself (full) or wrapped with LoRA adapters."""
    if settings.method == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    import warnings

    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_targets,
        # GPT-2 keeps its projections as Conv1D, whose weight is the transpose of a Linear's.
        fan_in_fan_out=getattr(model.config, "model_type", "") == "gpt2",
    )
    with warnings.catch_warnings():
        # peft warns that it sets fan_in_fan_out for Conv1D, which is what is asked for.
        warnings.simplefilter("ignore", UserWarning)
        return get_peft_model(model, config)


def merge(model: Any, settings: TrainSettings) -> Any:
    """Return a plain transformers model: LoRA adapters merged into the weights."""
    if settings.method == "lora":
        model = model.merge_and_unload()
    model.eval()
    return model


def collate(batch: Sequence[Encoded], pad_id: int, device: str) -> dict[str, Any]:
    """Pad a batch on the right; padding is neither attended to nor learned."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {
        "input_ids": ids.to(device),
        "labels": labels.to(device),
        "attention_mask": mask.to(device),
    }


def _batches(examples: Sequence[Encoded], batch_size: int, seed: int) -> Iterator[list[Encoded]]:
    rng = random.Random(f"batches-{seed}")  # noqa: S311 - a seeded shuffle, not a secret
    order = list(examples)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]


def mean_loss(model: Any, examples: Sequence[Encoded], pad_id: int, device: str) -> float:
    """Return the mean cross-entropy per target token over the examples."""
    import torch

    if not examples:
        return float("nan")
    model.eval()
    total, tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), 8):
            batch = list(examples[start : start + 8])
            inputs = collate(batch, pad_id, device)
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            shifted = logits.logits[:, :-1].float()
            labels = inputs["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shifted.reshape(-1, shifted.size(-1)),
                labels.reshape(-1),
                ignore_index=IGNORE,
                reduction="sum",
            )
            total += float(loss)
            tokens += int((labels != IGNORE).sum())
    return total / max(tokens, 1)


def train(
    model: Any,
    examples: Sequence[Encoded],
    settings: TrainSettings,
    *,
    pad_id: int,
    progress: bool = True,
) -> TrainStats:
    """Train in place for ``settings.steps`` optimizer steps; return what it took."""
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    if not examples:
        raise ValueError("no training examples")
    torch.manual_seed(settings.seed)
    model.to(settings.device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = get_linear_schedule_with_warmup(
        optimizer, round(settings.warmup_share * settings.steps), settings.steps
    )
    use_bf16 = settings.device.startswith("cuda") and torch.cuda.is_bf16_supported()
    batches = _batches(examples, settings.batch_size, settings.seed)
    losses: list[float] = []
    tokens = 0
    smoothed: float | None = None
    bar = tqdm(total=settings.steps, desc="fine-tuning", unit="step", disable=not progress)
    started = time.perf_counter()
    for _ in range(settings.steps):
        inputs = collate(next(batches), pad_id, settings.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        losses.append(value)
        tokens += int(inputs["attention_mask"].sum())
        smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
        bar.set_postfix(loss=f"{smoothed:.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
        bar.update(1)
    bar.close()
    seconds = time.perf_counter() - started
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    peak_gpu = (
        torch.cuda.max_memory_allocated() / 2**20 if settings.device.startswith("cuda") else None
    )
    return TrainStats(
        steps=settings.steps,
        seconds=round(seconds, 2),
        steps_per_s=round(settings.steps / seconds, 4),
        tokens_per_s=round(tokens / seconds, 1),
        first_loss=round(losses[0], 4),
        final_loss=round(sum(tail) / len(tail), 4),
        trainable_parameters=sum(p.numel() for p in trainable),
        total_parameters=sum(p.numel() for p in model.parameters()),
        peak_rss_mb=round(peak_rss_mb(), 1),
        peak_gpu_mb=round(peak_gpu, 1) if peak_gpu is not None else None,
        losses=[round(v, 4) for v in losses],
    )
