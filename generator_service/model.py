"""Loading the causal LM and its tokenizer: dtype, device, int8, and token counting.

Weights: transformers prefers ``model.safetensors`` when a revision has it. DialoGPT-medium's main
branch ships only ``pytorch_model.bin``; transformers 5 reads ``.bin`` files with
``torch.load(weights_only=True)``, which refuses pickled code, so loading it is safe. Set
``GENERATOR_SAFETENSORS_ONLY=true`` (and pin a ``GENERATOR_REVISION`` that has safetensors) to
refuse ``.bin`` files altogether.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from generator_service.model_sources import resolve_model

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "int8")


class HFTokenCounter:
    """A ``TokenCounter`` on a Hugging Face tokenizer (no special tokens added)."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        # A private copy of the Rust tokenizer: calling the transformers wrapper sets truncation
        # and padding state, and two request threads doing that at once fail "Already borrowed".
        self._tokenizer = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        # Text that the tokenizer would read as a control token ("<|im_end|>", "</s>"): the
        # prompt builder takes these out of untrusted text.
        specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials |= {t.content for t in decoder.values() if getattr(t, "special", False)}
        self.control_tokens: tuple[str, ...] = tuple(
            sorted((t for t in specials if t and not t.isspace()), key=len, reverse=True)
        )

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def truncate(self, text: str, max_tokens: int) -> str:
        if max_tokens <= 0:
            return ""
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= max_tokens:
            return text
        return text[: offsets[max_tokens - 1][1]]


class CharTokenCounter:
    """A ``TokenCounter`` for remote models whose tokenizer is unknown: 3 characters a token.

    English BPE averages about 4 characters a token; 3 errs on the side of a prompt that fits.
    """

    chars_per_token = 3

    def count(self, text: str) -> int:
        return math.ceil(len(text) / self.chars_per_token)

    def truncate(self, text: str, max_tokens: int) -> str:
        return text[: max(0, max_tokens) * self.chars_per_token]


def convert_conv1d_to_linear(model: Any) -> int:
    """Replace GPT-2's ``Conv1D`` projections by equivalent ``nn.Linear``; return how many.

    ``Conv1D`` stores its weight as (in, out), the transpose of ``nn.Linear``; the outputs are
    identical. Dynamic quantization only knows ``nn.Linear``, so without this it would touch
    nothing but ``lm_head``.
    """
    import torch
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(n_in, n_out, bias=True, dtype=child.weight.dtype)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    linear.bias.copy_(child.bias)
                setattr(parent, name, linear)
                replaced += 1
    return replaced


def quantize_int8(model: Any) -> Any:
    """Apply dynamic int8 quantization to every linear layer (CPU only)."""
    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    converted = convert_conv1d_to_linear(model)
    log.info("converted %d Conv1D modules to nn.Linear for int8 quantization", converted)
    return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@dataclass
class LoadedModel:
    """A causal LM ready for inference, and what the service needs to know about it."""

    model: Any
    tokenizer: Any
    name: str
    source: str
    dtype: str
    device: str
    eos_token: str
    eos_token_id: int
    context_tokens: int
    # Every token that ends an answer: EOS, the generation config's, the chat end-of-turn.
    stop_token_ids: frozenset[int] = frozenset()
    origin: str | None = None

    @property
    def description(self) -> str:
        made_from = f", from {self.origin}" if self.origin else ""
        return f"{self.name} ({self.dtype}, {self.device}{made_from})"

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))


def chat_formatter(tokenizer: Any) -> Callable[[list[dict[str, str]]], str] | None:
    """Return the tokenizer's own chat template as a function of messages, if it has one."""
    if not getattr(tokenizer, "chat_template", None):
        return None

    def render(messages: list[dict[str, str]]) -> str:
        rendered = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    return render


# Turn markers of the common chat templates (ChatML, Llama 3, Phi, Gemma, Mistral): the end of
# the answer's turn, or the start of a turn the model should not be writing.
TURN_MARKERS = (
    "<|im_end|>",
    "<|im_start|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<start_of_turn>",
    "</s>",
    "<|endoftext|>",
)


def stop_token_ids(tokenizer: Any, generation_config: Any) -> frozenset[int]:
    """Return the ids that end an answer: EOS, the generation config's EOS ids, turn markers."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif isinstance(configured, list | tuple):
        ids.update(int(i) for i in configured if i is not None)
    vocab = tokenizer.get_vocab()
    for marker in TURN_MARKERS:
        if marker in vocab:
            ids.add(int(vocab[marker]))
    return frozenset(ids)


def _context_tokens(model_config: Any, tokenizer: Any) -> int:
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(model_config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 1_000_000 else 1024


def load_model(
    name: str,
    *,
    revision: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    safetensors_only: bool = False,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load tokenizer and model once; raise with a readable reason when that is impossible."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {DTYPES}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} was asked for but CUDA is not available")
    if dtype == "int8" and device != "cpu":
        raise ValueError("int8 dynamic quantization runs on the CPU only")
    transformers.utils.logging.disable_progress_bar()
    resolved = resolve_model(name, cache_dir)
    source = resolved.source
    log.info("loading generator model %s (revision %s, %s, %s)", name, revision, dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=False)
    torch_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        source,
        revision=revision,
        dtype=torch_dtype,
        trust_remote_code=False,
        use_safetensors=True if safetensors_only else None,
    )
    model.eval()
    if dtype == "int8":
        model = quantize_int8(model)
    model.to(device)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer of {name} has no EOS token, which the prompt needs")
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        dtype=dtype,
        device=device,
        eos_token=tokenizer.eos_token,
        eos_token_id=int(tokenizer.eos_token_id),
        context_tokens=_context_tokens(model.config, tokenizer),
        stop_token_ids=stop_token_ids(tokenizer, getattr(model, "generation_config", None)),
        origin=resolved.origin,
    )
