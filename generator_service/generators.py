"""The ``Generator`` interface and its two implementations: the local model and a remote
OpenAI-compatible server (vLLM, TGI, Ollama, …)."""

from __future__ import annotations

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
    cut_at_stop,
    find_stop,
    held_back,
)
from generator_service.config import GeneratorConfig
from generator_service.errors import DeadlineExceeded, ModelNotLoaded
from generator_service.model import (
    CharTokenCounter,
    HFTokenCounter,
    LoadedModel,
    chat_formatter,
    load_model,
)
from generator_service.openai_api import api_stop
from generator_service.prompt import ChatFormat, Prompt, TokenCounter
from qa_common.errors import (
    BadGateway,
    DependencyTimeout,
    DependencyUnavailable,
    DownstreamError,
    ServiceError,
)
from qa_common.request_context import REQUEST_ID_HEADER, get_request_id

log = logging.getLogger(__name__)

# How errors name the upstream server.
SERVICE = "inference server"


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
        self.chat_format: ChatFormat | None = chat_formatter(loaded.tokenizer)
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
    """A generation answered by a remote OpenAI-compatible server, through the ``openai`` SDK."""

    def __init__(
        self,
        backend: OpenAIGenerator,
        request: dict[str, Any],
        prompt: Prompt,
        stop: tuple[str, ...],
        deadline: float,
    ) -> None:
        self._backend = backend
        self._request = request
        self._prompt = prompt
        # All stop strings, cut here too: the API takes only four, and some servers ignore it.
        self._stop = stop
        self._deadline = deadline
        self._result: GenerationResult | None = None
        self._stream: Any = None

    @property
    def final(self) -> GenerationResult | None:
        return self._result

    def cancel(self) -> None:
        stream = self._stream
        if stream is not None:
            stream.close()

    def result(self) -> GenerationResult:
        completion = self._backend.create(self._request, stream=False, deadline=self._deadline)
        try:
            choice = completion.choices[0]
            text = choice.message.content if self._backend.chat else choice.text
            reason = choice.finish_reason or "stop"
        except (AttributeError, IndexError, TypeError) as exc:
            raise BadGateway(
                "The inference server answered without choices.", dependency=SERVICE
            ) from exc
        text = text or ""
        if find_stop(text, self._stop) >= 0:
            text, reason = cut_at_stop(text, self._stop), "stop"
        self._result = self._make_result(text, completion.usage, reason)
        return self._result

    def stream(self) -> Iterator[str]:
        import openai

        self._stream = self._backend.create(self._request, stream=True, deadline=self._deadline)
        text = ""
        emitted = ""
        usage = None
        reason = "stop"
        try:
            for chunk in self._stream:
                usage = chunk.usage or usage
                for choice in chunk.choices or []:
                    piece = choice.delta.content if self._backend.chat else choice.text
                    text += piece or ""
                    reason = choice.finish_reason or reason
                shown = text.lstrip()
                at = find_stop(shown, self._stop)
                if at >= 0:
                    shown, reason = shown[:at], "stop"
                elif self._stop:
                    # What may be the start of a stop string waits for the next piece.
                    shown = shown[: len(shown) - held_back(shown, self._stop)]
                if len(shown) > len(emitted):
                    piece, emitted = shown[len(emitted) :], shown
                    yield piece
                if at >= 0:
                    break
                if time.monotonic() > self._deadline:
                    raise DeadlineExceeded()
        except openai.OpenAIError as exc:
            raise self._backend.translate(exc, self._deadline) from exc
        finally:
            self._stream.close()
            self._stream = None
        text = cut_at_stop(text, self._stop).strip()
        # What was held back and turned out not to be a stop string goes out now.
        if text.startswith(emitted) and len(text) > len(emitted):
            yield text[len(emitted) :]
        self._result = self._make_result(text, usage, reason)

    def _make_result(self, text: str, usage: Any, reason: str) -> GenerationResult:
        text = text.strip()
        prompt_tokens = getattr(usage, "prompt_tokens", None)
        completion_tokens = getattr(usage, "completion_tokens", None)
        return GenerationResult(
            text=text,
            prompt_tokens=int(prompt_tokens or self._prompt.token_count),
            completion_tokens=int(completion_tokens or self._backend.counter.count(text)),
            finish_reason="length" if reason == "length" else "stop",
        )


class OpenAIGenerator:
    """Sends the same fitted prompt to an OpenAI-compatible ``/v1/chat/completions`` or
    ``/v1/completions`` endpoint, with the official ``openai`` SDK."""

    # Only a connection that was never made is retried: the request did not reach the server.
    # The SDK's own retries also repeat timeouts and 5xx answers of a POST that may have been
    # processed, so they are off.
    connect_retries = 1
    retry_backoff_s = 0.2
    connect_timeout_s = 2.0

    def __init__(self, config: GeneratorConfig, *, client: Any = None) -> None:
        import openai

        base = (config.generator_api_base or "").rstrip("/")
        # Servers document their base either with or without /v1; accept both.
        if not base.endswith("/v1"):
            base += "/v1"
        self.base_url = base
        self.read_timeout_s = config.generator_api_timeout_s
        key = config.generator_api_key.get_secret_value() if config.generator_api_key else None
        # Sent with every request: the caller's request id, and no header taken from the
        # process's OPENAI_* variables (a key for api.openai.com must not reach this server).
        self._headers: dict[str, Any] = {
            "OpenAI-Organization": openai.Omit(),
            "OpenAI-Project": openai.Omit(),
        }
        if not key:
            self._headers["Authorization"] = openai.Omit()
        # httpx2 logs every request at INFO; the access log already has each one.
        logging.getLogger("httpx2").setLevel(logging.WARNING)
        self.client = client or openai.OpenAI(
            # The SDK insists on a key; without one configured the header is left out above.
            api_key=key or "unused",
            base_url=base,
            max_retries=0,
            timeout=openai.Timeout(self.read_timeout_s, connect=self.connect_timeout_s),
        )
        self.chat = config.generator_api_mode == "chat"
        # The server applies its model's template to the messages itself.
        self.chat_format: ChatFormat | None = None
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
        request: dict[str, Any] = {
            "model": self.model_name,
            "max_tokens": params.max_new_tokens,
            # Greedy is temperature 0 in this protocol.
            "temperature": params.temperature if params.do_sample else 0.0,
        }
        if params.do_sample:
            request["top_p"] = params.top_p
            if params.seed is not None:
                request["seed"] = params.seed
        stop = api_stop(params.stop)
        if stop:
            request["stop"] = stop
        if self.chat:
            request["messages"] = prompt.messages
        else:
            request["prompt"] = prompt.text
        return OpenAIGeneration(self, request, prompt, params.stop, deadline)

    def create(self, request: dict[str, Any], *, stream: bool, deadline: float) -> Any:
        """Send one completion request; return the SDK's completion, or its stream."""
        import openai

        api: Any = self.client.chat.completions if self.chat else self.client.completions
        extra: dict[str, Any] = {"stream": stream}
        if stream:
            extra["stream_options"] = {"include_usage": True}
        for attempt in range(self.connect_retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded()
            read_s = min(remaining, self.read_timeout_s)
            try:
                return api.create(
                    **request,
                    **extra,
                    timeout=openai.Timeout(read_s, connect=min(self.connect_timeout_s, read_s)),
                    extra_headers=self._request_headers(),
                )
            except openai.OpenAIError as exc:
                if attempt < self.connect_retries and _never_connected(exc):
                    log.warning("%s at %s unreachable; retrying once", SERVICE, self.base_url)
                    time.sleep(self.retry_backoff_s)
                    continue
                raise self.translate(exc, deadline) from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    def _request_headers(self) -> dict[str, Any]:
        request_id = get_request_id()
        if request_id:
            return {**self._headers, REQUEST_ID_HEADER: request_id}
        return self._headers

    def translate(self, exc: Exception, deadline: float | None = None) -> ServiceError:
        """Map an SDK error onto the project's error tree (503, 504, 502 or the upstream 4xx)."""
        import openai

        if isinstance(exc, openai.APIConnectionError):
            if _never_connected(exc):
                # Not sent: nothing was done upstream, the server is just not there (503).
                how = (
                    "did not accept a connection in time"
                    if _timed_out(exc)
                    else "cannot be reached"
                )
                return DependencyUnavailable(
                    f"{SERVICE} at {self.base_url} {how}.", dependency=SERVICE
                )
            if isinstance(exc, openai.APITimeoutError):
                if deadline is not None and time.monotonic() >= deadline - 0.05:
                    return DeadlineExceeded()
                return DependencyTimeout(
                    f"{SERVICE} did not answer within {self.read_timeout_s:g}s.",
                    dependency=SERVICE,
                )
            # Connected, then the connection broke: the server may have done the work.
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
            return BadGateway(f"The connection to {SERVICE} broke: {cause}.", dependency=SERVICE)
        if isinstance(exc, openai.APIStatusError):
            body = exc.body if isinstance(exc.body, dict) else {}
            message = body.get("message") if isinstance(body.get("message"), str) else None
            code = body.get("code") if isinstance(body.get("code"), str) else None
            if exc.status_code >= 500:
                return BadGateway(
                    f"{SERVICE} failed with {exc.status_code}: {message or 'no message'}",
                    dependency=SERVICE,
                    details={"status": exc.status_code, "code": code},
                )
            # A 4xx (429 included) passes through with its status, as the HTTP client does.
            error = DownstreamError(
                exc.status_code,
                code or "downstream_error",
                message or f"{SERVICE} rejected the request.",
                body.get("details"),
            )
            retry_after = exc.response.headers.get("Retry-After")
            if retry_after:
                error.headers["Retry-After"] = retry_after
            return error
        # An error event inside a stream, or a body the SDK could not read.
        return BadGateway(f"{SERVICE} answered with an error: {exc}", dependency=SERVICE)

    def check_ready(self) -> dict[str, Any]:
        import openai

        started = time.perf_counter()
        try:
            self.client.models.list(
                timeout=openai.Timeout(5.0, connect=self.connect_timeout_s),
                extra_headers=self._request_headers(),
            )
        except openai.NotFoundError:
            pass  # A server without /models still answered: it is up.
        except openai.OpenAIError as exc:
            raise self.translate(exc) from exc
        return {"upstream_ms": round((time.perf_counter() - started) * 1000, 2)}

    def close(self) -> None:
        self.client.close()


def _never_connected(exc: BaseException) -> bool:
    # httpx2 (or httpx, when the SDK runs on it) names the failure to open a connection.
    cause = exc.__cause__
    return cause is not None and type(cause).__name__ in ("ConnectError", "ConnectTimeout")


def _timed_out(exc: BaseException) -> bool:
    return exc.__cause__ is not None and type(exc.__cause__).__name__ == "ConnectTimeout"


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
