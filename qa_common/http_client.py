"""Base for the clients one service uses to call another over HTTP + JSON.

Every library failure is mapped here, once: connection refused → 503, read timeout → 504,
downstream 5xx → 502, downstream 4xx → its own status and envelope, passed through.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.exceptions import SSLError as urllib3_ssl_error
from urllib3.util.retry import Retry

from qa_common.errors import (
    BadGateway,
    DependencyTimeout,
    DependencyUnavailable,
    DownstreamError,
    Overloaded,
)
from qa_common.request_context import REQUEST_ID_HEADER, get_request_id

log = logging.getLogger(__name__)
# Calls that may be sent twice: a replica that dropped one after it was sent is not asked again
# for anything else (a POST that crashes a replica would be sent to every replica in turn).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


def internal_api_key() -> str | None:
    """Return ``INTERNAL_API_KEY`` from the environment (what the tools send), or None."""
    return os.environ.get("INTERNAL_API_KEY") or None


def internal_auth_headers() -> dict[str, str]:
    """Return the header that carries ``INTERNAL_API_KEY`` from the environment, if it is set."""
    key = internal_api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


class ConnectionLost(BadGateway):
    """The request was sent, then the connection broke: it may have been processed (502)."""

    code = "connection_lost"


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """Tell whether a connection error happened before any of the request was sent."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    # Refused, unresolvable (NameResolutionError is a NewConnectionError), timed out while
    # connecting, or a TLS handshake that failed: no byte of the request reached the server.
    return isinstance(reason, NewConnectionError | ConnectTimeoutError | urllib3_ssl_error)


class ReplicaPool:
    """Spread requests over a service's replicas, round-robin, setting failed ones aside.

    Each configured URL whose host name resolves to several addresses (a scaled compose
    service, a Kubernetes headless Service) expands to one replica per address; names are
    re-resolved every ``dns_refresh_s`` so replicas that come and go are followed. A replica
    whose connection failed is skipped for ``cooldown_s``, then tried again.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cooldown_s: float = 10.0,
        dns_refresh_s: float = 15.0,
        resolve: Callable[[str, int], list[str]] | None = None,
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls if u.strip()]
        if not self.urls:
            raise ValueError("at least one URL is needed")
        self.cooldown_s = cooldown_s
        self.dns_refresh_s = dns_refresh_s
        self._resolve = resolve or _resolve_addresses
        self._lock = threading.Lock()
        self._replicas: list[str] = list(self.urls)
        self._resolved_at = float("-inf")
        self._next = 0
        self._failed_until: dict[str, float] = {}
        # Replica URL (an address) → the host name it was resolved from, for TLS.
        self.hostnames: dict[str, str] = {}

    def candidates(self) -> list[str]:
        """Return replicas to try in order: the next healthy ones first, set-aside ones last."""
        now = time.monotonic()
        with self._lock:
            if now - self._resolved_at >= self.dns_refresh_s:
                self._refresh(now)
            count = len(self._replicas)
            start = self._next % count
            self._next = (self._next + 1) % count
            ordered = self._replicas[start:] + self._replicas[:start]
            healthy = [u for u in ordered if self._failed_until.get(u, 0.0) <= now]
            resting = [u for u in ordered if self._failed_until.get(u, 0.0) > now]
        return healthy + resting

    def mark_failed(self, url: str) -> None:
        with self._lock:
            self._failed_until[url] = time.monotonic() + self.cooldown_s

    def mark_ok(self, url: str) -> None:
        if url in self._failed_until:
            with self._lock:
                self._failed_until.pop(url, None)

    def _refresh(self, now: float) -> None:
        replicas: list[str] = []
        hostnames: dict[str, str] = {}
        for url in self.urls:
            parts = urlsplit(url)
            host, port = (
                parts.hostname or "",
                parts.port or (443 if parts.scheme == "https" else 80),
            )
            try:
                addresses = [] if _is_ip(host) else self._resolve(host, port)
            except OSError:
                addresses = []  # unresolvable now: keep the name and let the connection fail
            if len(addresses) > 1:
                expanded = [
                    urlunsplit(parts._replace(netloc=f"{_bracket(a)}:{port}")) for a in addresses
                ]
                replicas += expanded
                if parts.scheme == "https":
                    # The certificate names the host, not the address: keep it for TLS.
                    hostnames.update(dict.fromkeys(expanded, host))
            else:
                replicas.append(url)
        self._replicas = list(dict.fromkeys(replicas))
        self.hostnames = hostnames
        self._resolved_at = now


def _resolve_addresses(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bracket(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class _HostNameAdapter(HTTPAdapter):
    """Connect to an address, but speak TLS to (and verify) the host name it stands for."""

    def __init__(self, hostname: str, **kwargs: Any) -> None:
        self.hostname = hostname
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        pool_kwargs["server_hostname"] = self.hostname
        pool_kwargs["assert_hostname"] = self.hostname
        super().init_poolmanager(*args, **pool_kwargs)


class ServiceClient:
    """Pooled ``requests.Session`` to one downstream service (one or more replicas)."""

    def __init__(
        self,
        service: str,
        base_url: str | Sequence[str],
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 30.0,
        connect_retries: int = 2,
        retry_backoff_s: float = 0.2,
        pool_size: int = 16,
        headers: dict[str, str] | None = None,
        replica_cooldown_s: float = 10.0,
        dns_refresh_s: float = 15.0,
        api_key: str | None = None,
    ) -> None:
        self.service = service
        urls = [u.strip() for u in base_url.split(",")] if isinstance(base_url, str) else base_url
        self.replicas = ReplicaPool(
            urls, cooldown_s=replica_cooldown_s, dns_refresh_s=dns_refresh_s
        )
        self.base_url = self.replicas.urls[0]
        self.timeout = (connect_timeout_s, read_timeout_s)
        self.session = requests.Session()
        # Only a refused or failed connection is safe to retry: the request never reached the
        # service. A read timeout may have done the work already, so it is never retried.
        retry = Retry(
            total=connect_retries,
            connect=connect_retries,
            read=False,  # a read error (timeout) is re-raised as itself, never retried
            status=0,
            other=0,
            redirect=0,
            allowed_methods=None,
            backoff_factor=retry_backoff_s,
            raise_on_status=False,
        )
        self._adapter_options = {
            "max_retries": retry,
            "pool_connections": 32,
            "pool_maxsize": pool_size,
        }
        adapter = HTTPAdapter(**self._adapter_options)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self._pinned: set[str] = set()
        self._pinned_lock = threading.Lock()
        self.session.headers.update(headers or {})
        if api_key:
            # Sent on every call; the session never logs its headers.
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        read_timeout_s: float | None = None,
        stream: bool = False,
        files: Any = None,
        data: Any = None,
        accept: str | None = None,
        idempotent: bool | None = None,
    ) -> requests.Response:
        """Send a request; return the response when its status is 2xx, raise otherwise.

        A replica that cannot be connected to is set aside and the next one tried: the request
        never reached it, so trying elsewhere cannot do the work twice. One that dropped the
        connection after the request was sent is tried elsewhere only for an ``idempotent`` call
        (by default: GET, HEAD, OPTIONS, PUT, DELETE; a caller marks a read sent as POST).
        """
        if idempotent is None:
            idempotent = method.upper() in IDEMPOTENT_METHODS
        headers = {"Accept": accept} if accept else {}
        request_id = get_request_id()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        timeout = self.timeout if read_timeout_s is None else (self.timeout[0], read_timeout_s)
        unavailable: DependencyUnavailable | ConnectionLost | None = None
        for base_url in self.replicas.candidates():
            try:
                response = self._send(
                    base_url,
                    method,
                    path,
                    json=json,
                    params=params,
                    headers=headers,
                    timeout=timeout,
                    stream=stream,
                    files=files,
                    data=data,
                )
            except DependencyUnavailable as exc:
                self.replicas.mark_failed(base_url)
                log.warning("%s replica %s unreachable; trying the next", self.service, base_url)
                unavailable = exc
                continue
            except ConnectionLost as exc:
                # Sent, then the connection died: the replica may have done the work. Only a
                # call that can be repeated safely goes to the next replica.
                self.replicas.mark_failed(base_url)
                if not idempotent:
                    raise
                log.warning(
                    "%s replica %s dropped a %s; trying the next", self.service, base_url, method
                )
                unavailable = exc
                continue
            self.replicas.mark_ok(base_url)
            self._raise_for_status(response)
            return response
        assert unavailable is not None  # candidates() is never empty
        raise unavailable

    def _send(
        self, base_url: str, method: str, path: str, *, timeout: tuple[float, float], **kwargs: Any
    ) -> requests.Response:
        hostname = self.replicas.hostnames.get(base_url)
        if hostname is not None:
            self._pin_hostname(base_url, hostname)
            port = urlsplit(base_url).port
            host_header = hostname if port in (None, 443) else f"{hostname}:{port}"
            kwargs["headers"] = {**(kwargs.get("headers") or {}), "Host": host_header}
        try:
            return self.session.request(method, f"{base_url}{path}", timeout=timeout, **kwargs)
        except requests.exceptions.ConnectTimeout as exc:
            raise DependencyUnavailable(
                f"{self.service} at {base_url} did not accept a connection in time.",
                dependency=self.service,
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise DependencyTimeout(
                f"{self.service} did not answer within {timeout[1]:g}s.", dependency=self.service
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            if _never_sent(exc):
                raise DependencyUnavailable(
                    f"{self.service} at {base_url} cannot be reached.", dependency=self.service
                ) from exc
            raise ConnectionLost(
                f"{self.service} closed the connection before answering.",
                dependency=self.service,
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise BadGateway(
                f"Calling {self.service} failed: {exc}", dependency=self.service
            ) from exc

    def _pin_hostname(self, base_url: str, hostname: str) -> None:
        with self._pinned_lock:
            if base_url in self._pinned:
                return
            # requests picks the adapter with the longest matching prefix: this replica's own.
            self.session.mount(f"{base_url}/", _HostNameAdapter(hostname, **self._adapter_options))
            self._pinned.add(base_url)

    def request_json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return its parsed JSON body."""
        response = self.request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise BadGateway(
                f"{self.service} answered with a body that is not JSON.", dependency=self.service
            ) from exc

    def _raise_for_status(self, response: requests.Response) -> None:
        if response.status_code < 400:
            return
        envelope = _error_envelope(response)
        if response.status_code >= 500:
            response.close()
            reason = envelope.get("message") if envelope else response.reason
            raise BadGateway(
                f"{self.service} failed with {response.status_code}: {reason}",
                dependency=self.service,
                details={"status": response.status_code, "code": envelope.get("code")},
            )
        response.close()
        if response.status_code == 429:
            # Shed, not processed: the caller's client is told when to come back, as we were.
            retry_after = response.headers.get("Retry-After", "1")
            raise Overloaded(
                f"The {self.service} is busy: {envelope.get('message', 'too many requests')}",
                retry_after_s=int(retry_after) if retry_after.isdigit() else 1,
                details={"dependency": self.service},
            )
        raise DownstreamError(
            response.status_code,
            envelope.get("code", "downstream_error"),
            envelope.get("message", f"{self.service} rejected the request."),
            envelope.get("details"),
        )


def _error_envelope(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}
