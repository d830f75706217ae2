"""Base for the clients one service uses to call another over HTTP + JSON.

Every library failure is mapped here, once: connection refused → 503, read timeout → 504,
downstream 5xx → 502, downstream 4xx → its own status and envelope, passed through.
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from qa_common.errors import (
    BadGateway,
    DependencyTimeout,
    DependencyUnavailable,
    DownstreamError,
)
from qa_common.request_context import REQUEST_ID_HEADER, get_request_id

log = logging.getLogger(__name__)


class ServiceClient:
    """One pooled ``requests.Session`` to one downstream service, with explicit timeouts."""

    def __init__(
        self,
        service: str,
        base_url: str,
        *,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 30.0,
        connect_retries: int = 2,
        retry_backoff_s: float = 0.2,
        pool_size: int = 16,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.service = service
        self.base_url = base_url.rstrip("/")
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
        adapter = HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(headers or {})

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
    ) -> requests.Response:
        """Send a request; return the response when its status is 2xx, raise otherwise."""
        url = f"{self.base_url}{path}"
        headers = {}
        request_id = get_request_id()
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        timeout = self.timeout if read_timeout_s is None else (self.timeout[0], read_timeout_s)
        try:
            response = self.session.request(
                method,
                url,
                json=json,
                params=params,
                headers=headers,
                timeout=timeout,
                stream=stream,
            )
        except requests.exceptions.ConnectTimeout as exc:
            raise DependencyUnavailable(
                f"{self.service} at {self.base_url} did not accept a connection in time.",
                dependency=self.service,
            ) from exc
        except requests.exceptions.ReadTimeout as exc:
            raise DependencyTimeout(
                f"{self.service} did not answer within {timeout[1]:g}s.", dependency=self.service
            ) from exc
        except requests.exceptions.ConnectionError as exc:
            raise DependencyUnavailable(
                f"{self.service} at {self.base_url} cannot be reached.", dependency=self.service
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise BadGateway(
                f"Calling {self.service} failed: {exc}", dependency=self.service
            ) from exc
        self._raise_for_status(response)
        return response

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
