"""Flask plumbing shared by the services: request ids, JSON errors, body validation, load
shedding, access logs and Prometheus metrics."""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from flask import Flask, Response, g, jsonify, request, stream_with_context
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from qa_common.config import ServiceSettings
from qa_common.errors import (
    BadRequest,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
)
from qa_common.logging_setup import configure_logging
from qa_common.request_context import (
    REQUEST_ID_HEADER,
    accept_request_id,
    get_request_id,
    set_request_id,
)

log = logging.getLogger(__name__)
access_log = logging.getLogger("access")

ModelT = TypeVar("ModelT", bound=BaseModel)
T = TypeVar("T")

# Probes and scrapes must answer even when the service sheds load.
UNLIMITED_ENDPOINTS = frozenset({"healthz", "readyz", "metrics_endpoint", "static"})
# Answered without the internal key: what probes and Prometheus call.
OPEN_ENDPOINTS = frozenset({"healthz", "readyz", "metrics_endpoint"})


def error_response(error: ServiceError) -> Response:
    """Render a ServiceError as the JSON envelope with its status and headers."""
    response = jsonify(error.to_dict(get_request_id()))
    response.status_code = error.status
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def _field_path(loc: Iterable[Any]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def validation_details(exc: ValidationError) -> list[dict[str, str]]:
    """Turn pydantic errors into [{field, message}] a client can act on."""
    return [{"field": _field_path(err["loc"]), "message": err["msg"]} for err in exc.errors()]


def validate(model: type[ModelT], data: Any, where: str = "body") -> ModelT:
    """Validate data against a pydantic model; a failure is a 422 naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = validation_details(exc)
        fields = ", ".join(dict.fromkeys(d["field"] for d in details))
        raise ValidationFailed(f"Invalid {where} field(s): {fields}.", details=details) from exc


def parse_body(model: type[ModelT]) -> ModelT:
    """Validate the JSON request body against a pydantic model (415/400/422 otherwise)."""
    if not request.is_json:
        raise UnsupportedMediaType()
    try:
        payload = request.get_json(silent=True)
    except RecursionError:  # nested too deeply for json: not a ValueError, so not silenced
        payload = None
    if payload is None:
        raise BadRequest("The request body is not valid JSON.", code="invalid_json")
    return validate(model, payload, "body")


def parse_query(model: type[ModelT]) -> ModelT:
    """Validate query-string arguments against a pydantic model (422 otherwise)."""
    return validate(model, request.args.to_dict(), "query")


class InFlightLimiter:
    """Bound the requests served at once; past the bound, answer 429 instead of queueing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def try_acquire(self) -> bool:
        return self._slots.acquire(blocking=False)

    def release(self) -> None:
        self._slots.release()


class HttpMetrics:
    """Request count, latency and in-flight gauges, in the app's own registry."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests_total",
            "HTTP requests answered.",
            ["service", "method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["service", "method", "endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "http_requests_in_flight",
            "HTTP requests being served.",
            ["service"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "http_requests_shed_total",
            "Requests answered 429 because too many were in flight.",
            ["service"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        # Under gunicorn with several workers each process writes its own files; merge them.
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            merged = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)


def install_service_plumbing(
    app: Flask, service: str, *, max_in_flight: int, internal_key: str | None = None
) -> HttpMetrics:
    """Wire request ids, access logs, keys, load shedding, metrics and JSON errors into an app."""
    limiter = InFlightLimiter(max_in_flight)
    expected = f"Bearer {internal_key}".encode() if internal_key else None
    http_metrics = HttpMetrics(service)
    app.extensions["http_metrics"] = http_metrics
    app.extensions["in_flight_limiter"] = limiter

    @app.before_request
    def _start_request() -> None:
        set_request_id(accept_request_id(request.headers.get(REQUEST_ID_HEADER)))
        g.request_started = time.perf_counter()
        g.holds_slot = False
        if expected is not None and request.endpoint not in OPEN_ENDPOINTS:
            sent = request.headers.get("Authorization", "").encode()
            # Constant time: the comparison must not tell how much of a guess was right.
            if not hmac.compare_digest(sent, expected):
                raise Unauthorized(
                    f"The {service} answers other services only: send "
                    "Authorization: Bearer <INTERNAL_API_KEY>."
                )
        if request.endpoint in UNLIMITED_ENDPOINTS:
            return
        if not limiter.try_acquire():
            http_metrics.rejected.labels(service).inc()
            raise Overloaded(f"More than {limiter.limit} requests in flight; retry shortly.")
        g.holds_slot = True
        http_metrics.in_flight.labels(service).inc()

    @app.after_request
    def _finish_request(response: Response) -> Response:
        request_id = get_request_id()
        if request_id:
            response.headers[REQUEST_ID_HEADER] = request_id
        started = g.get("request_started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        endpoint = request.endpoint or "unmatched"
        http_metrics.requests.labels(
            service, request.method, endpoint, str(response.status_code)
        ).inc()
        http_metrics.latency.labels(service, request.method, endpoint).observe(elapsed)
        if endpoint not in ("healthz", "metrics_endpoint"):
            access_log.info(
                "%s %s %d %.1fms",
                request.method,
                request.path,
                response.status_code,
                elapsed * 1000,
            )
        return response

    @app.teardown_request
    def _release_slot(_exc: BaseException | None) -> None:
        if g.get("holds_slot"):
            g.holds_slot = False
            limiter.release()
            http_metrics.in_flight.labels(service).dec()

    @app.errorhandler(ServiceError)
    def _service_error(error: ServiceError) -> Response:
        # A probe polls /readyz every few seconds: its "not ready" would flood the log.
        if error.status >= 500 and request.endpoint != "readyz":
            log.warning("%s: %s", error.code, error.message)
        return error_response(error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error: RequestEntityTooLarge) -> Response:
        # A route may set its own limit (uploads); report the one that applied.
        limit = request.max_content_length
        return error_response(PayloadTooLarge(f"The request body exceeds {limit} bytes."))

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        code = (error.name or "http_error").lower().replace(" ", "_")
        # Keep werkzeug's own headers (a 405's Allow) but not its HTML content type.
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        wrapped = ServiceError(error.description or error.name, code=code, headers=headers)
        wrapped.status = error.code or 500
        return error_response(wrapped)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(ServiceError())

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(http_metrics.render(), mimetype=CONTENT_TYPE_LATEST)

    return http_metrics


def create_service_app(
    import_name: str,
    service: str,
    settings: ServiceSettings,
    *,
    internal: bool = False,
    **flask_options: Any,
) -> tuple[Flask, HttpMetrics]:
    """Build a service's Flask app with logging, limits, plumbing and ``/healthz`` in place.

    An ``internal`` service (called by other services only) requires ``INTERNAL_API_KEY`` on
    every route but the probes and metrics, when the key is set.
    """
    configure_logging(service, settings.log_level, settings.log_format)
    app = Flask(import_name, **flask_options)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    key = settings.internal_api_key.get_secret_value() if settings.internal_api_key else None
    http_metrics = install_service_plumbing(
        app, service, max_in_flight=settings.in_flight_limit, internal_key=key if internal else None
    )
    if settings.in_flight_limit >= settings.worker_threads:
        log.warning(
            "MAX_IN_FLIGHT=%d is not below the %d threads of a worker: requests past the "
            "threads queue inside gunicorn and are never shed with 429",
            settings.in_flight_limit,
            settings.worker_threads,
        )

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    return app, http_metrics


def check_readiness(check: Callable[[], T]) -> T:
    """Run a readiness check; any failure is a 503 ``not_ready`` that says why."""
    try:
        return check()
    except ServiceError as exc:
        raise NotReady(f"Not ready: {exc.message}") from exc
    except Exception as exc:
        log.exception("readiness check failed")
        raise NotReady(f"Not ready: {type(exc).__name__}: {exc}") from exc


class CachedReadiness:
    """Answer /readyz from the last result of a check that a background thread repeats.

    A probe then costs nothing (no model forward pass per call, however often it polls), and
    a dependency that goes away or comes back is seen within ``interval_s``. The first call
    runs the check itself: there is nothing to answer from yet.
    """

    def __init__(self, check: Callable[[], dict[str, Any]], interval_s: float) -> None:
        self._check = check
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._result: dict[str, Any] | None = None
        self._error: NotReady | None = None
        self._checked_at = 0.0
        self._last_asked = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def get(self) -> dict[str, Any]:
        """Return the last successful check's result (with its age), or raise its NotReady."""
        with self._lock:
            self._last_asked = time.monotonic()
            # Stale when nobody asked for a while (the refresher stopped): check again now.
            fresh = (self._result is not None or self._error is not None) and (
                self._last_asked - self._checked_at <= 2 * self.interval_s
            )
            if self._thread is None and self.interval_s > 0:
                self._thread = threading.Thread(
                    target=self._refresh_forever, name="readiness", daemon=True
                )
                self._thread.start()
        if not fresh or self.interval_s <= 0:
            self._refresh()
        with self._lock:
            if self._error is not None:
                raise self._error
            assert self._result is not None
            age = round(time.monotonic() - self._checked_at, 2)
            return {**self._result, "checked_s_ago": age}

    def _refresh(self) -> None:
        try:
            result, error = check_readiness(self._check), None
        except NotReady as exc:
            result, error = None, exc
        with self._lock:
            self._result, self._error = result, error
            self._checked_at = time.monotonic()

    def _refresh_forever(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                # Nobody is probing (a test app, a replica taken out of rotation): stop
                # running the check; the next /readyz starts the refresher again.
                if time.monotonic() - self._last_asked > 3 * self.interval_s:
                    self._thread = None
                    return
            self._refresh()

    def close(self) -> None:
        self._stop.set()


def sse_event(event: str, data: Any) -> str:
    """Render one server-sent event with JSON data."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def sse_response(events: Iterator[str]) -> Response:
    """Stream rendered events as ``text/event-stream``, unbuffered by proxies."""
    response = Response(stream_with_context(events), mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return response
