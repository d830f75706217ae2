"""The ``Generator`` interface and its two implementations: the local model and a remote
OpenAI-compatible server (vLLM, TGI, Ollama, …)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from generator_service.batching import (
    BatchingEngine,
    GenerationHandle,
    GenerationResult,
    SamplingParams,
)
from generator_service.config import GeneratorConfig
from generator_service.errors import DeadlineExceeded, ModelNotLoaded
from generator_service.model import CharTokenCounter, HFTokenCounter, LoadedModel, load_model
from generator_service.prompt import ChatFormat, Prompt, TokenCounter
from qa_common.errors import BadGateway, DownstreamError
from qa_common.http_client import ServiceClient

log = logging.getLogger(__name__)


class Generation(Protocol):
    """One running generation."""

    def stream(self) -> Iterator[str]:
        """Yield text pieces as they are produced."""
        ...

    def result(self) -> GenerationResult:
        """Wait for the whole answer."""
        ...

    @property
    def final(self) -> GenerationResult | None:
        """The result once ``stream`` has ended."""
        ...

    def cancel(self) -> None:
        """Give up on this generation."""
        ...


class Generator(Protocol):
    """Turns a fitted prompt into an answer."""

    model_name: str
    context_tokens: int
    eos_token: str
    counter: TokenCounter
    # The model's own chat template, when it has one (the "chat" prompt template needs it).
    chat_format: ChatFormat | None

    def start(self, prompt: Prompt, params: SamplingParams, deadline: float) -> Generation:
        """Begin generating; raise at once when it cannot be accepted (429, 503)."""
        ...

    def check_ready(self) -> dict[str, Any]:
        """Really exercise the model or server; raise with the reason when it cannot answer."""
        ...

    def close(self) -> None:
        """Release threads and connections."""
        ...


class LocalGenerator:
    """A transformers model in this process, served by one ``BatchingEngine``."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_batch_size: int = 8,
        max_queue: int = 32,
        retry_after_s: int = 2,
        context_tokens: int | None = None,
        on_step: Any = None,
        model_thread: ThreadPoolExecutor | None = None,
        fallback_reason: str | None = None,
    ) -> None:
        self.loaded = loaded
        self.fallback_reason = fallback_reason
        self.model_name = loaded.name
        self.eos_token = loaded.eos_token
        self.context_tokens = min(context_tokens or loaded.context_tokens, loaded.context_tokens)
        self.counter = HFTokenCounter(loaded.tokenizer)
        self.description = loaded.description
        self.origin = loaded.origin
        self.chat_format: ChatFormat | None = (
            self._apply_chat_template if loaded.has_chat_template else None
        )
        self.engine = BatchingEngine(
            loaded.model,
            eos_token_id=loaded.eos_token_id,
            stop_token_ids=loaded.stop_token_ids,
            context_tokens=self.context_tokens,
            decode=self._decode,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            retry_after_s=retry_after_s,
            on_step=on_step,
        )
        self.engine.start(model_thread)
        self._model_thread = model_thread

    def _apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        return str(
            self.loaded.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        )

    def _decode(self, token_ids: list[int]) -> str:
        return self.loaded.tokenizer.decode(token_ids, skip_special_tokens=True)

    def start(self, prompt: Prompt, params: SamplingParams, deadline: float) -> GenerationHandle:
        return self.engine.submit(self.counter.encode(prompt.text), params, deadline)

    def check_ready(self) -> dict[str, Any]:
        import torch

        if not self.engine.is_alive():
            raise ModelNotLoaded("The batching loop has stopped.")

        def forward_is_finite() -> bool:
            with torch.inference_mode():
                ids = torch.tensor([[self.loaded.eos_token_id]], device=self.loaded.device)
                logits = self.loaded.model(input_ids=ids, use_cache=False).logits
                return bool(torch.isfinite(logits).all())

        started = time.perf_counter()
        # On the loop's own thread: torch work from a request thread would slow the loop.
        if not self.engine.call(forward_is_finite):
            raise ModelNotLoaded("The model produced non-finite logits.")
        return {
            "forward_ms": round((time.perf_counter() - started) * 1000, 2),
            "queue_depth": self.engine.queue_depth,
            "active": self.engine.active,
        }

    def close(self) -> None:
        self.engine.stop()
        if self._model_thread is not None:
            self._model_thread.shutdown(wait=False)


class OpenAIGeneration:
    """A generation answered by a remote OpenAI-compatible server."""

    def __init__(
        self, backend: OpenAIGenerator, payload: dict[str, Any], prompt: Prompt, deadline: float
    ) -> None:
        self._backend = backend
        self._payload = payload
        self._prompt = prompt
        self._deadline = deadline
        self._result: GenerationResult | None = None
        self._response: Any = None

    @property
    def final(self) -> GenerationResult | None:
        return self._result

    def cancel(self) -> None:
        if self._response is not None:
            self._response.close()

    def _read_timeout(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded()
        return min(remaining, self._backend.read_timeout_s)

    def result(self) -> GenerationResult:
        body = self._backend.client.request_json(
            "POST",
            self._backend.path,
            json={**self._payload, "stream": False},
            read_timeout_s=self._read_timeout(),
        )
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] if self._backend.chat else choice["text"]
            reason = choice.get("finish_reason") or "stop"
        except (KeyError, IndexError, TypeError) as exc:
            raise BadGateway(
                "The inference server answered without choices.", dependency="inference server"
            ) from exc
        self._result = self._make_result(text or "", body.get("usage"), reason)
        return self._result

    def stream(self) -> Iterator[str]:
        payload = {**self._payload, "stream": True, "stream_options": {"include_usage": True}}
        self._response = self._backend.client.request(
            "POST",
            self._backend.path,
            json=payload,
            read_timeout_s=self._read_timeout(),
            stream=True,
        )
        pieces: list[str] = []
        usage = None
        reason = "stop"
        try:
            for line in self._response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                data = line[len("data:") :].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if self._backend.chat:
                        piece = (choice.get("delta") or {}).get("content") or ""
                    else:
                        piece = choice.get("text") or ""
                    reason = choice.get("finish_reason") or reason
                    if piece:
                        if not pieces:
                            piece = piece.lstrip()
                        if piece:
                            pieces.append(piece)
                            yield piece
                if time.monotonic() > self._deadline:
                    raise DeadlineExceeded()
        finally:
            self._response.close()
        self._result = self._make_result("".join(pieces), usage, reason)

    def _make_result(self, text: str, usage: Any, reason: str) -> GenerationResult:
        usage = usage if isinstance(usage, dict) else {}
        text = text.strip()
        return GenerationResult(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or self._prompt.token_count),
            completion_tokens=int(
                usage.get("completion_tokens") or self._backend.counter.count(text)
            ),
            finish_reason="length" if reason == "length" else "stop",
        )


class OpenAIGenerator:
    """Sends the same fitted prompt to an OpenAI-compatible ``/v1/chat/completions`` or
    ``/v1/completions`` endpoint."""

    def __init__(self, config: GeneratorConfig, *, client: ServiceClient | None = None) -> None:
        base = (config.generator_api_base or "").rstrip("/")
        # Servers document their base either with or without /v1; accept both.
        if not base.endswith("/v1"):
            base += "/v1"
        headers = {}
        if config.generator_api_key:
            headers["Authorization"] = f"Bearer {config.generator_api_key.get_secret_value()}"
        self.read_timeout_s = config.generator_api_timeout_s
        self.client = client or ServiceClient(
            "inference server",
            base,
            read_timeout_s=self.read_timeout_s,
            connect_retries=1,
            headers=headers,
        )
        self.chat = config.generator_api_mode == "chat"
        # The server applies its model's template to the messages itself.
        self.chat_format: ChatFormat | None = None
        self.path = "/chat/completions" if self.chat else "/completions"
        self.model_name = config.api_model
        self.description = f"{self.model_name} at {base} ({config.generator_api_mode})"
        self.eos_token = "\n"  # noqa: S105 - a turn separator, not a secret
        self.counter: TokenCounter = CharTokenCounter()
        if config.generator_tokenizer:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                config.generator_tokenizer, trust_remote_code=False
            )
            self.counter = HFTokenCounter(tokenizer)
            self.eos_token = tokenizer.eos_token or "\n"
        self.context_tokens = config.generator_context_tokens or 4096

    def start(self, prompt: Prompt, params: SamplingParams, deadline: float) -> OpenAIGeneration:
        payload: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": params.max_new_tokens,
            # Greedy is temperature 0 in this protocol.
            "temperature": params.temperature if params.do_sample else 0.0,
        }
        if params.do_sample:
            payload["top_p"] = params.top_p
            if params.seed is not None:
                payload["seed"] = params.seed
        if self.chat:
            payload["messages"] = prompt.messages
        else:
            payload["prompt"] = prompt.text
        return OpenAIGeneration(self, payload, prompt, deadline)

    def check_ready(self) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            self.client.request("GET", "/models", read_timeout_s=5.0).close()
        except DownstreamError as exc:
            # A server without /models still answered: it is up.
            if exc.status != 404:
                raise
        return {"upstream_ms": round((time.perf_counter() - started) * 1000, 2)}

    def close(self) -> None:
        self.client.close()


def _load_on_this_thread(torch_threads: int, name: str, **kwargs: Any) -> LoadedModel:
    if torch_threads:
        import torch

        # OpenMP's thread count is per calling thread: set it where the model will run.
        torch.set_num_threads(torch_threads)
    return load_model(name, **kwargs)


def build_generator(config: GeneratorConfig) -> Generator:
    """Build the configured backend; the local model loads here.

    When GENERATOR_MODEL cannot be loaded and GENERATOR_MODEL_FALLBACK is set, the fallback is
    served instead, and one log line says so and why (``fallback_reason`` tells /readyz).
    """
    if config.generator_backend == "openai":
        return OpenAIGenerator(config)
    # The model is loaded, and later run, by one thread only (see BatchingEngine.start).
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generator-model")
    fallback_reason: str | None = None

    def load(name: str, revision: str | None) -> LoadedModel:
        return model_thread.submit(
            _load_on_this_thread,
            config.generator_torch_threads,
            name,
            revision=revision,
            dtype=config.generator_dtype,
            device=config.generator_device,
            safetensors_only=config.generator_safetensors_only,
            cache_dir=config.generator_cache_dir,
        ).result()

    try:
        try:
            loaded = load(config.generator_model, config.generator_revision)
        except Exception as exc:
            fallback = config.generator_model_fallback
            if not fallback or fallback == config.generator_model:
                raise
            fallback_reason = f"{config.generator_model} could not be loaded: {_first_line(exc)}"
            log.warning("serving the fallback model %s: %s", fallback, fallback_reason)
            loaded = load(fallback, None)
    except BaseException:
        model_thread.shutdown(wait=False)
        raise
    return LocalGenerator(
        loaded,
        max_batch_size=config.generator_max_batch_size,
        max_queue=config.generator_max_queue,
        retry_after_s=config.generator_retry_after_s,
        context_tokens=config.generator_context_tokens,
        model_thread=model_thread,
        fallback_reason=fallback_reason,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
