"""Iteration-level (continuous) batching: one loop per process runs every generation.

Each iteration of the loop is one forward pass. When requests are waiting and the batch has free
rows, the iteration prefills them (left-padded, with attention mask and position ids) into their
own KV cache, which is then merged into the running batch's cache; otherwise it decodes one token
for every running request. A request that finishes (EOS, ``max_new_tokens``, deadline, client
gone) leaves the batch at once, and padding columns nobody needs any more are cut off the cache.

Why not transformers' own ``ContinuousBatchingManager`` (``generate_batch``)? In 5.24 it does run
on CPU with GPT-2 (paged attention, its own scheduler thread), but only temperature, top-k and
top-p have per-request versions; ``no_repeat_ngram_size`` and ``repetition_penalty``, which
DialoGPT needs against its loops, are set once per manager and run over its packed token layout
(it warns "NoRepeatNGramLogitsProcessor might not be supported by CB"), and its set-up made a
2 × 16-token ``generate_batch`` on the tiny test model take seconds. This loop is a plain
``DynamicCache`` plus the three things batching needs: left padding, the mask, and
``position_ids = (mask.cumsum(-1) - 1).clamp(min=0)``; it passes ``cache=``, the 5.x name.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from generator_service.errors import (
    DeadlineExceeded,
    GenerationFailed,
    ModelNotLoaded,
    QueueFull,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """How one request chooses its tokens; greedy unless ``do_sample``."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    # Loop breakers look at the answer only: the answer may quote the snippets verbatim.
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    # Text that ends the answer where it first appears; it is not part of the answer.
    stop: tuple[str, ...] = ()


def find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Return where the first stop string begins in ``text``, or -1."""
    found = [index for stop in stops if stop and (index := text.find(stop)) >= 0]
    return min(found) if found else -1


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """Return how many trailing characters might begin a stop string (not safe to show yet)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    """Return ``text`` up to its first stop string."""
    index = find_stop(text, stops)
    return text if index < 0 else text[:index]


@dataclass(frozen=True)
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS) or "length"


class GenerationHandle:
    """One request's view of its generation: iterate for text pieces, or wait for the result."""

    def __init__(
        self,
        prompt_tokens: int,
        deadline: float,
        decode: Callable[[list[int]], str],
        stop: tuple[str, ...] = (),
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.stop = stop
        self.deadline = deadline
        self._decode = decode
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._cancelled = threading.Event()
        self._token_ids: list[int] = []
        self._completion_tokens = 0
        self._result: GenerationResult | None = None

    # Called by the batching loop.
    def _push(self, kind: str, payload: Any = None) -> None:
        self._events.put((kind, payload))

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Tell the loop to drop this request at its next step (client gone, deadline)."""
        self._cancelled.set()

    def _text(self) -> str:
        return cut_at_stop(self._decode(self._token_ids), self.stop).lstrip()

    def _next_event(self) -> tuple[str, Any]:
        """Wait for the loop's next event: a token, or done; raise its error or the deadline."""
        try:
            kind, payload = self._events.get(timeout=max(0.0, self.deadline - time.monotonic()))
        except queue.Empty:
            self.cancel()
            raise DeadlineExceeded() from None
        if kind not in ("token", "done"):
            raise payload
        return kind, payload

    def _finish(self, payload: tuple[str, int]) -> GenerationResult:
        reason, self._completion_tokens = payload
        self._result = GenerationResult(
            text=self._text().strip(),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._completion_tokens,
            finish_reason=reason,
        )
        return self._result

    def stream(self) -> Iterator[str]:
        """Yield the answer's text as it is produced; leading whitespace is dropped.

        Text that may be the start of a stop string is held back until the next token shows
        whether it is one, so a stop string never reaches the client even in part.
        """
        emitted = ""
        while True:
            kind, payload = self._next_event()
            if kind == "done":
                text = self._finish(payload).text
                # Whatever was held back (an unfinished character) goes out now.
                if text.startswith(emitted) and len(text) > len(emitted):
                    yield text[len(emitted) :]
                return
            self._token_ids.append(payload)
            text = self._text()
            if self.stop:
                text = text[: len(text) - held_back(text, self.stop)]
            # A byte-level BPE token can end inside a UTF-8 character: wait for the rest.
            if text.endswith("\ufffd") or not text.startswith(emitted):
                continue
            piece, emitted = text[len(emitted) :], text
            if piece:
                yield piece

    def result(self) -> GenerationResult:
        """Wait for the whole answer.

        The same result as draining ``stream``, but the answer is decoded once at the end rather
        than once per token: a waiting request thread then wakes for each token only to store
        it, and takes no time from the batching loop's thread (the GIL) while the batch runs.
        """
        while True:
            kind, payload = self._next_event()
            if kind == "done":
                return self._finish(payload)
            self._token_ids.append(payload)

    @property
    def final(self) -> GenerationResult | None:
        """The result once the stream has ended."""
        return self._result


@dataclass(eq=False)
class _Sequence:
    handle: GenerationHandle
    prompt_ids: list[int]
    params: SamplingParams
    rng: Any = None  # torch.Generator when sampling with a seed
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: Exception | None = None


def banned_ngram_tokens(tokens: list[int], n: int) -> list[int]:
    """Tokens that would repeat an n-gram already present in ``tokens``."""
    if n <= 0 or len(tokens) < n:
        return []
    prefix = tuple(tokens[len(tokens) - n + 1 :]) if n > 1 else ()
    banned = []
    for start in range(len(tokens) - n + 1):
        if tuple(tokens[start : start + n - 1]) == prefix:
            banned.append(tokens[start + n - 1])
    return banned


class BatchingEngine:
    """Owns the model's forward passes: a bounded wait queue and one batching thread."""

    def __init__(
        self,
        model: Any,
        *,
        eos_token_id: int,
        context_tokens: int,
        decode: Callable[[list[int]], str],
        max_batch_size: int = 8,
        max_queue: int = 32,
        retry_after_s: int = 2,
        pad_token_id: int | None = None,
        stop_token_ids: Collection[int] = (),
        on_step: Callable[[str, int, int, int], None] | None = None,
    ) -> None:
        self.model = model
        self.eos_token_id = eos_token_id
        self.stop_token_ids = frozenset({eos_token_id, *stop_token_ids})
        self._stop_index: Any = None  # the same ids as a tensor, made on first use
        self.pad_token_id = eos_token_id if pad_token_id is None else pad_token_id
        self.context_tokens = context_tokens
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._decode = decode
        self.on_step = on_step  # (kind, batch rows, tokens, waiting) for metrics
        self._device = next(model.parameters()).device
        self._cond = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._n_active = 0
        self._active: list[_Sequence] = []
        self._cache: Any = None
        self._mask: Any = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: Future[None] | None = None
        self._calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self.steps = 0

    # ---- the request side -------------------------------------------------------------
    def start(self, model_thread: ThreadPoolExecutor | None = None) -> None:
        """Start the batching loop, on ``model_thread`` when given (the one that loaded the model).

        Torch's OpenMP pool belongs to the thread that calls it: once one thread has run the
        model, any other thread running it competes with that pool's workers, and decoding
        (many small ops) ran about 1.5× slower here. So one thread does all of a model's work.
        """
        if self._thread is not None or self._loop is not None:
            return
        if model_thread is not None:
            self._loop = model_thread.submit(self._run)
        else:
            self._thread = threading.Thread(
                target=self._run, name="generator-batching", daemon=True
            )
            self._thread.start()

    def is_alive(self) -> bool:
        if self._loop is not None:
            return not self._loop.done()
        return self._thread is not None and self._thread.is_alive()

    def call(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run ``fn`` on the loop's thread between two steps and return its result."""
        future: Future[Any] = Future()
        with self._cond:
            if self._stopping or not self.is_alive():
                raise ModelNotLoaded("The generation loop is not running.")
            self._calls.append((fn, future))
            self._cond.notify()
        return future.result(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return self._n_active

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, deadline: float
    ) -> GenerationHandle:
        """Queue one generation; raise ``QueueFull`` when too many are already waiting."""
        handle = GenerationHandle(len(prompt_ids), deadline, self._decode, params.stop)
        seq = _Sequence(handle, list(prompt_ids), params, rng=self._make_rng(params))
        with self._cond:
            if self._stopping or not self.is_alive():
                raise ModelNotLoaded("The generation loop is not running.")
            free_rows = max(0, self.max_batch_size - self._n_active)
            if len(self._waiting) >= self.max_queue + free_rows:
                raise QueueFull(
                    f"{len(self._waiting)} generation requests are waiting; retry shortly.",
                    retry_after_s=self.retry_after_s,
                )
            self._waiting.append(seq)
            self._cond.notify()
        return handle

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop; every waiting or running request gets an error."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._loop is not None:
            with contextlib.suppress(FutureTimeout):
                self._loop.result(timeout)

    def _make_rng(self, params: SamplingParams) -> Any:
        if not params.do_sample or params.seed is None:
            return None
        import torch

        rng = torch.Generator(device=self._device)
        rng.manual_seed(params.seed)
        return rng

    # ---- the loop -----------------------------------------------------------------------
    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                with self._cond:
                    idle = not self._stopping and not self._waiting and not self._active
                    if idle and self.on_step:
                        self.on_step("idle", 0, 0, 0)
                    while (
                        not self._stopping
                        and not self._waiting
                        and not self._active
                        and not self._calls
                    ):
                        self._cond.wait()
                    if self._stopping:
                        break
                    calls = list(self._calls)
                    self._calls.clear()
                    newcomers = self._admit()
                    self._n_active = len(self._active) + len(newcomers)
                for fn, future in calls:
                    try:
                        future.set_result(fn())
                    except Exception as exc:
                        future.set_exception(exc)
                try:
                    if newcomers:
                        self._prefill(newcomers)
                    elif self._active:
                        self._decode_step()
                    self._retire()
                except Exception as exc:
                    log.exception("generation step failed; failing the batch")
                    failure = GenerationFailed(f"The model failed: {type(exc).__name__}: {exc}")
                    running = {id(s) for s in self._active}
                    for seq in self._active + [s for s in newcomers if id(s) not in running]:
                        seq.handle._push("error", failure)
                    self._active, self._cache, self._mask = [], None, None
                with self._cond:
                    self._n_active = len(self._active)
        shutdown = ModelNotLoaded("The service is shutting down.")
        with self._cond:
            for seq in [*self._active, *self._waiting]:
                seq.handle._push("error", shutdown)
            for _fn, future in self._calls:
                future.set_exception(shutdown)
            self._calls.clear()
            self._waiting.clear()
            self._active = []

    def _admit(self) -> list[_Sequence]:
        now = time.monotonic()
        newcomers: list[_Sequence] = []
        while self._waiting and len(self._active) + len(newcomers) < self.max_batch_size:
            seq = self._waiting.popleft()
            if seq.handle.cancelled:
                continue
            if now >= seq.handle.deadline:
                seq.handle._push("error", DeadlineExceeded("The request waited past its deadline."))
                continue
            newcomers.append(seq)
        return newcomers

    def _forward(self, input_ids: Any, mask: Any, cache: Any) -> Any:
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :]

    def _prefill(self, newcomers: list[_Sequence]) -> None:
        import torch
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in newcomers)
        ids = torch.full((len(newcomers), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(newcomers), width), dtype=torch.long)
        for row, seq in enumerate(newcomers):
            n = len(seq.prompt_ids)
            ids[row, width - n :] = torch.tensor(seq.prompt_ids, dtype=torch.long)
            mask[row, width - n :] = 1
        ids, mask = ids.to(self._device), mask.to(self._device)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, cache)
        self._merge(cache, mask, newcomers)
        self._accept(newcomers, self._choose(newcomers, logits))
        self.steps += 1
        if self.on_step:
            self.on_step("prefill", len(newcomers), int(mask.sum()), len(self._waiting))

    def _decode_step(self) -> None:
        import torch

        rows = self._active
        ids = torch.tensor([[s.generated[-1]] for s in rows], dtype=torch.long, device=self._device)
        ones = torch.ones((len(rows), 1), dtype=self._mask.dtype, device=self._device)
        self._mask = torch.cat([self._mask, ones], dim=1)
        logits = self._forward(ids, self._mask, self._cache)
        self._accept(rows, self._choose(rows, logits))
        self.steps += 1
        if self.on_step:
            self.on_step("decode", len(rows), len(rows), len(self._waiting))

    def _merge(self, cache: Any, mask: Any, newcomers: list[_Sequence]) -> None:
        import torch
        import torch.nn.functional as F

        if not self._active:
            self._cache, self._mask, self._active = cache, mask, list(newcomers)
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            for attr in ("keys", "values"):
                old = F.pad(getattr(old_layer, attr), (0, 0, width - old_len, 0))
                new = F.pad(getattr(new_layer, attr), (0, 0, width - new_len, 0))
                setattr(old_layer, attr, torch.cat([old, new], dim=0))
        self._mask = torch.cat(
            [F.pad(self._mask, (width - old_len, 0)), F.pad(mask, (width - new_len, 0))], dim=0
        )
        self._active = self._active + list(newcomers)

    def _choose(self, rows: list[_Sequence], logits: Any) -> list[int]:
        import torch

        scores = logits.float()
        for i, seq in enumerate(rows):
            p = seq.params
            if len(seq.generated) < p.min_new_tokens:
                if self._stop_index is None:
                    stop_ids = sorted(self.stop_token_ids)
                    self._stop_index = torch.tensor(stop_ids, device=scores.device)
                scores[i, self._stop_index] = -math.inf
            if p.repetition_penalty != 1.0 and seq.generated:
                idx = torch.tensor(sorted(set(seq.generated)), device=scores.device)
                picked = scores[i, idx]
                scores[i, idx] = torch.where(
                    picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty
                )
            banned = banned_ngram_tokens(seq.generated, p.no_repeat_ngram_size)
            if banned:
                scores[i, banned] = -math.inf
        chosen = scores.argmax(dim=-1).tolist()
        for i, seq in enumerate(rows):
            if seq.params.do_sample:
                chosen[i] = self._sample(scores[i], seq)
        return chosen

    @staticmethod
    def _sample(row: Any, seq: _Sequence) -> int:
        import torch

        row = row / seq.params.temperature
        if seq.params.top_p < 1.0:
            sorted_scores, order = torch.sort(row, descending=True)
            cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(-1)
            # Keep the smallest prefix whose mass reaches top_p (always at least one token).
            drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= seq.params.top_p
            sorted_scores[drop] = -math.inf
            row = torch.full_like(row, -math.inf).scatter(0, order, sorted_scores)
        probs = torch.softmax(row, dim=-1)
        return int(torch.multinomial(probs, 1, generator=seq.rng).item())

    def _accept(self, rows: list[_Sequence], tokens: list[int]) -> None:
        for seq, token in zip(rows, tokens, strict=True):
            seq.generated.append(token)
            if token in self.stop_token_ids:
                seq.finish_reason = "stop"
                continue
            seq.handle._push("token", token)
            if seq.params.stop and find_stop(self._decode(seq.generated), seq.params.stop) >= 0:
                seq.finish_reason = "stop"
            elif (
                len(seq.generated) >= seq.params.max_new_tokens
                or len(seq.prompt_ids) + len(seq.generated) >= self.context_tokens
            ):
                seq.finish_reason = "length"

    def _retire(self) -> None:
        import torch

        now = time.monotonic()
        keep: list[int] = []
        for row, seq in enumerate(self._active):
            if seq.finish_reason is not None:
                seq.handle._push("done", (seq.finish_reason, len(seq.generated)))
            elif seq.handle.cancelled:
                pass
            elif now >= seq.handle.deadline:
                seq.handle._push("error", DeadlineExceeded())
            else:
                keep.append(row)
        if len(keep) == len(self._active):
            return
        if not keep:
            self._active, self._cache, self._mask = [], None, None
            return
        index = torch.tensor(keep, dtype=torch.long, device=self._device)
        self._active = [self._active[i] for i in keep]
        self._mask = self._mask.index_select(0, index)
        # Columns that are padding in every remaining row are dead weight in every later step.
        first = int((self._mask.sum(dim=0) > 0).nonzero()[0])
        self._mask = self._mask[:, first:]
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first:, :]
