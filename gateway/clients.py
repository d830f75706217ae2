"""Clients for the retriever and the generator: one pooled session each, over their replicas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests
from urllib3.exceptions import ReadTimeoutError

from gateway.config import GatewayConfig
from qa_common.errors import BadGateway, DependencyTimeout, ServiceError
from qa_common.http_client import ServiceClient
from qa_common.retriever_client import RetrieverClient


def _replica_options(config: GatewayConfig) -> dict[str, Any]:
    """Retry, replica and key settings both downstream clients share."""
    key = config.internal_api_key
    return {
        "connect_retries": config.connect_retries,
        "replica_cooldown_s": config.replica_cooldown_s,
        "dns_refresh_s": config.dns_refresh_s,
        "api_key": key.get_secret_value() if key else None,
    }


def retriever_client(config: GatewayConfig) -> RetrieverClient:
    """Return the gateway's client of its retriever replicas, with its timeouts and mode."""
    options = _replica_options(config)
    # "" sends no key: the gateway's own setting decides, not the process environment.
    options["api_key"] = options["api_key"] or ""
    return RetrieverClient(
        config.retriever_urls,
        search_mode=config.search_mode,
        connect_timeout_s=config.retriever_connect_timeout_s,
        read_timeout_s=config.retriever_read_timeout_s,
        **options,
    )


@dataclass(frozen=True)
class StreamEvent:
    event: str
    data: dict[str, Any]


class GeneratorClient(ServiceClient):
    """Calls the generator, whole answers or a stream of tokens."""

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(
            "generator",
            config.generator_urls,
            connect_timeout_s=config.generator_connect_timeout_s,
            read_timeout_s=config.generator_read_timeout_s,
            **_replica_options(config),
        )

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.request_json("POST", "/v1/generate", json={**body, "stream": False})

    def stream(self, body: dict[str, Any]) -> Iterator[StreamEvent]:
        """Yield the generator's server-sent events; an ``error`` event raises."""
        response = self.request("POST", "/v1/generate", json={**body, "stream": True}, stream=True)
        try:
            for event in parse_sse(response.iter_lines(decode_unicode=True)):
                if event.event == "error":
                    error = event.data.get("error", {})
                    raise BadGateway(
                        f"generator failed mid-stream: {error.get('message', 'unknown error')}",
                        dependency="generator",
                        details={"code": error.get("code")},
                    )
                yield event
        except requests.exceptions.RequestException as exc:
            # Reading the body fails with requests' own errors (a stall past the read timeout
            # is a ConnectionError wrapping ReadTimeoutError): map them like request() does.
            if exc.args and isinstance(exc.args[0], ReadTimeoutError):
                raise DependencyTimeout(
                    f"generator sent nothing for {self.timeout[1]:g}s mid-stream.",
                    dependency="generator",
                ) from exc
            raise BadGateway(f"generator stream broke off: {exc}", dependency="generator") from exc
        finally:
            response.close()

    def ready(self) -> dict[str, Any]:
        return self.request_json("GET", "/readyz", read_timeout_s=5.0)


def parse_sse(lines: Iterator[str]) -> Iterator[StreamEvent]:
    """Parse ``text/event-stream`` lines into events with JSON data."""
    event, data = "message", []
    for line in lines:
        if line is None:
            continue
        if line == "":
            if data:
                yield StreamEvent(event, _json_data("\n".join(data)))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    if data:
        yield StreamEvent(event, _json_data("\n".join(data)))


def _json_data(raw: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise BadGateway(
            "generator sent an event that is not JSON", dependency="generator"
        ) from exc
    return value if isinstance(value, dict) else {"value": value}


__all__ = [
    "GeneratorClient",
    "RetrieverClient",
    "ServiceError",
    "StreamEvent",
    "parse_sse",
    "retriever_client",
]
