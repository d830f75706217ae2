"""The generator's Flask app factory and routes."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, jsonify
from prometheus_client import Counter, Gauge, Histogram

from generator_service import openai_api
from generator_service.batching import SamplingParams
from generator_service.config import GeneratorConfig, load_config
from generator_service.errors import ModelNotLoaded
from generator_service.generators import Generation, Generator, build_generator
from generator_service.pipeline import generator_prompt_builder, sampling_params
from generator_service.prompt import (
    Prompt,
    PromptBuilder,
    PromptTemplate,
    Turn,
)
from generator_service.schemas import ChatCompletionRequest, CompletionRequest, GenerateRequest
from qa_common.errors import ServiceError, ValidationFailed
from qa_common.request_context import get_request_id
from qa_common.web import (
    CachedReadiness,
    check_readiness,
    create_service_app,
    parse_body,
    sse_event,
    sse_response,
)

log = logging.getLogger(__name__)


class GeneratorMetrics:
    """Generation counters beside the HTTP ones, in the app's registry."""

    def __init__(self, registry: Any) -> None:
        self.tokens = Counter(
            "generator_tokens_total",
            "Tokens processed by the model.",
            ["kind"],
            registry=registry,
        )
        self.steps = Counter(
            "generator_steps_total",
            "Forward passes of the batching loop.",
            ["kind"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "generator_batch_rows",
            "Requests in one forward pass.",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.queue_depth = Gauge(
            "generator_queue_depth",
            "Requests waiting to join the batch.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.active = Gauge(
            "generator_active_requests",
            "Requests in the running batch.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def on_step(self, kind: str, rows: int, tokens: int, waiting: int) -> None:
        # Set here rather than read on scrape: with several workers only written values merge.
        self.queue_depth.set(waiting)
        self.active.set(rows if kind != "idle" else 0)
        if kind == "idle":
            return
        self.steps.labels(kind).inc()
        self.batch_rows.labels(kind).observe(rows)
        self.tokens.labels("prompt" if kind == "prefill" else "completion").inc(tokens)


def _sampling_params(config: GeneratorConfig, body: GenerateRequest) -> SamplingParams:
    max_new = body.max_new_tokens or config.generator_max_new_tokens
    if max_new > config.generator_max_new_tokens_cap:
        raise ValidationFailed(
            f"max_new_tokens may be at most {config.generator_max_new_tokens_cap}.",
            details=[{"field": "max_new_tokens", "message": "above the configured cap"}],
        )
    return sampling_params(
        config,
        max_new_tokens=max_new,
        min_new_tokens=body.min_new_tokens,
        do_sample=body.do_sample,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop,
    )


def _check_sizes(config: GeneratorConfig, body: GenerateRequest) -> None:
    details = []
    if len(body.question) > config.max_question_chars:
        details.append({"field": "question", "message": "too long"})
    details += [
        {"field": f"snippets.{i}", "message": "too long"}
        for i, s in enumerate(body.snippets)
        if len(s) > config.max_snippet_chars
    ]
    if details:
        raise ValidationFailed(
            f"Questions are limited to {config.max_question_chars} characters and snippets to "
            f"{config.max_snippet_chars}.",
            details=details,
        )


def create_app(
    config: GeneratorConfig | None = None,
    *,
    generator: Generator | None = None,
) -> Flask:
    """Build the generator app; the model loads here, once, never at import time."""
    config = config or load_config()
    app, http_metrics = create_service_app(__name__, "generator", config, internal=True)
    app.extensions["generator_config"] = config
    metrics = GeneratorMetrics(http_metrics.registry)
    template: PromptTemplate | None = None

    load_error: str | None = None
    builder: PromptBuilder | None = None
    try:
        if generator is None:
            generator = build_generator(config)
        builder = generator_prompt_builder(generator, config)
        template = builder.template
        log.info(
            "generator ready to serve: %s, prompt template %s",
            getattr(generator, "description", "?"),
            template.name,
        )
    except Exception as exc:  # a bad model name must not crash-loop the container
        load_error = f"{type(exc).__name__}: {exc}"
        generator = None
        log.exception("could not load the generation model; /readyz will say why")
    app.extensions["generator"] = generator
    engine = getattr(generator, "engine", None)
    if engine is not None:
        engine.on_step = metrics.on_step

    def ready_generator() -> tuple[Generator, PromptBuilder]:
        if generator is None or builder is None:
            raise ModelNotLoaded(f"The generation model is not loaded: {load_error}")
        return generator, builder

    def check() -> dict[str, Any]:
        gen, _ = ready_generator()
        return gen.check_ready()

    readiness = CachedReadiness(check, config.readiness_interval_s)
    app.extensions["readiness"] = readiness

    @app.get("/readyz")
    def readyz() -> Any:
        gen, prompt_builder = check_readiness(ready_generator)
        checks = readiness.get()
        about: dict[str, Any] = {}
        if getattr(gen, "origin", None):
            about["model_origin"] = gen.origin
        if getattr(gen, "fallback_reason", None):
            # The local start serves the bundled model when the configured one cannot load.
            about["fallback_reason"] = gen.fallback_reason
        return jsonify(
            status="ready",
            model=gen.model_name,
            backend=config.generator_backend,
            template=prompt_builder.template.name,
            context_tokens=gen.context_tokens,
            **about,
            **checks,
        )

    @app.post("/v1/generate")
    def generate() -> Any:
        started = time.perf_counter()
        body = parse_body(GenerateRequest)
        _check_sizes(config, body)
        params = _sampling_params(config, body)
        gen, prompt_builder = ready_generator()
        prompt = prompt_builder.build(
            body.question,
            body.snippets,
            [Turn(t.role, t.text) for t in body.history],
            max_new_tokens=params.max_new_tokens,
        )
        timeout_s = min(body.timeout_s or config.generator_timeout_s, config.generator_timeout_s)
        deadline = time.monotonic() + timeout_s
        generation = gen.start(prompt, params, deadline)
        fitted = {
            "snippets_used": len(prompt.snippets),
            "snippets_dropped": prompt.dropped_snippets,
            "history_used": len(prompt.history),
        }
        if body.stream:
            return _stream_response(generation, gen.model_name, started, fitted)
        try:
            result = generation.result()
        except BaseException:
            generation.cancel()
            raise
        return jsonify(
            answer=result.text,
            model=gen.model_name,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            took_ms=round((time.perf_counter() - started) * 1000, 2),
            finish_reason=result.finish_reason,
            **fitted,
        )

    # The OpenAI-compatible routes: internal like /v1/generate (same validation, load shedding
    # and error envelope), so that an OpenAI client, or another generator with
    # GENERATOR_BACKEND=openai, can use this one.
    @app.get("/v1/models")
    def list_models() -> Any:
        gen, _ = ready_generator()
        model = {"id": gen.model_name, "object": "model", "created": 0, "owned_by": "grounded-qa"}
        return jsonify(object="list", data=[model])

    @app.post("/v1/chat/completions")
    def chat_completions() -> Any:
        body = parse_body(ChatCompletionRequest)
        params = openai_api.sampling_params(config, body, body.answer_tokens)
        gen, prompt_builder = ready_generator()
        prompt, turn_stops = openai_api.chat_prompt(
            body,
            counter=gen.counter,
            context_tokens=gen.context_tokens,
            max_new_tokens=params.max_new_tokens,
            chat_format=getattr(gen, "chat_format", None),
            eos_joined=prompt_builder.template.turn_separator is None,
            eos_token=gen.eos_token,
        )
        if turn_stops:
            params = dataclasses.replace(params, stop=(*params.stop, *turn_stops))
        return answer_openai("chat", gen, prompt, params, body.stream, body.include_usage)

    @app.post("/v1/completions")
    def completions() -> Any:
        body = parse_body(CompletionRequest)
        params = openai_api.sampling_params(config, body, body.answer_tokens)
        gen, _ = ready_generator()
        prompt = openai_api.completion_prompt(
            body,
            counter=gen.counter,
            context_tokens=gen.context_tokens,
            max_new_tokens=params.max_new_tokens,
        )
        return answer_openai("completion", gen, prompt, params, body.stream, body.include_usage)

    def answer_openai(
        kind: openai_api.Kind,
        gen: Generator,
        prompt: Prompt,
        params: SamplingParams,
        stream: bool,
        include_usage: bool,
    ) -> Any:
        generation = gen.start(prompt, params, time.monotonic() + config.generator_timeout_s)
        if stream:
            return _openai_stream_response(kind, generation, gen.model_name, include_usage)
        try:
            result = generation.result()
        except BaseException:
            generation.cancel()
            raise
        return jsonify(openai_api.response_body(kind, result, gen.model_name))

    return app


def _started_stream(generation: Generation) -> Iterator[str]:
    """Return the generation's pieces once the first one is in.

    Waiting for it here means a failure before any text (deadline, upstream down) is still an
    ordinary JSON error with its status rather than an event in a 200.
    """
    pieces = generation.stream()
    try:
        first = list(itertools.islice(pieces, 1))
    except BaseException:
        generation.cancel()
        raise
    return itertools.chain(first, pieces)


def _openai_stream_response(
    kind: openai_api.Kind, generation: Generation, model_name: str, include_usage: bool
) -> Response:
    """Answer as the OpenAI API streams: ``data:`` chunks, then ``data: [DONE]``."""
    pieces = _started_stream(generation)
    request_id = get_request_id()

    def events() -> Iterator[str]:
        try:
            yield from openai_api.stream_events(
                kind,
                pieces,
                lambda: generation.final,
                model=model_name,
                include_usage=include_usage,
                request_id=request_id,
            )
        finally:
            # The client may have gone away mid-stream: free its row in the batch.
            generation.cancel()

    return sse_response(events())


def _stream_response(
    generation: Generation, model_name: str, started: float, fitted: dict[str, Any]
) -> Response:
    """Answer as ``text/event-stream``: ``token`` events, then ``done`` (or ``error``)."""
    pieces = _started_stream(generation)
    request_id = get_request_id()

    def events() -> Iterator[str]:
        try:
            for piece in pieces:
                yield sse_event("token", {"text": piece})
            result = generation.final
            assert result is not None
            yield sse_event(
                "done",
                {
                    "answer": result.text,
                    "model": model_name,
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "took_ms": round((time.perf_counter() - started) * 1000, 2),
                    "finish_reason": result.finish_reason,
                    **fitted,
                },
            )
        except ServiceError as exc:
            log.warning("stream ended with %s: %s", exc.code, exc.message)
            yield sse_event("error", exc.to_dict(request_id))
        except Exception:
            log.exception("stream failed")
            yield sse_event("error", ServiceError().to_dict(request_id))
        finally:
            # The client may have gone away mid-stream: free its row in the batch.
            generation.cancel()

    return sse_response(events())
