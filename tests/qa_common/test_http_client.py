"""ServiceClient against a real tiny HTTP server running in a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from qa_common.errors import (
    BadGateway,
    DependencyTimeout,
    DependencyUnavailable,
    DownstreamError,
    Overloaded,
)
from qa_common.http_client import ServiceClient
from qa_common.process import free_port
from qa_common.request_context import set_request_id


class Downstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: dict[str, int] = {}
        self.headers_seen: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"


class _Handler(BaseHTTPRequestHandler):
    server: Downstream

    def log_message(self, *_args: Any) -> None:
        pass

    def _reply(self, status: int, body: Any, content_type: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        with self.server.lock:
            self.server.hits[path] = self.server.hits.get(path, 0) + 1
            self.server.headers_seen.append(dict(self.headers))
        if path == "/ok":
            self._reply(200, {"ok": True, "echo": json.loads(raw) if raw else None})
        elif path == "/slow":
            # Waits until the test is done (or 10 s), far beyond the client's read timeout.
            self.server.release.wait(timeout=10)
            self._reply(200, {"late": True})
        elif path == "/shed":
            data = json.dumps(
                {"error": {"code": "overloaded", "message": "busy", "request_id": "x"}}
            )
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Retry-After", "7")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data.encode())
        elif path == "/fail500":
            self._reply(500, {"error": {"code": "boom", "message": "it broke", "request_id": "x"}})
        elif path == "/fail503-html":
            self._reply(503, b"<html>down</html>", "text/html")
        elif path == "/reject404":
            self._reply(
                404,
                {
                    "error": {
                        "code": "document_not_found",
                        "message": "no doc",
                        "request_id": "x",
                        "details": {"id": "d1"},
                    }
                },
            )
        elif path == "/reject422-plain":
            self._reply(422, b"bad", "text/plain")
        elif path == "/not-json":
            self._reply(200, b"<html>hello</html>", "text/html")
        else:
            self._reply(404, {"error": {"code": "nope", "message": "nope", "request_id": "x"}})

    do_GET = _handle
    do_POST = _handle
    do_DELETE = _handle


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    server = Downstream()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def client(downstream: Downstream) -> Iterator[ServiceClient]:
    svc = ServiceClient("down", downstream.url, read_timeout_s=0.5, retry_backoff_s=0.0)
    try:
        yield svc
    finally:
        svc.close()


@pytest.fixture(autouse=True)
def _no_request_id() -> Iterator[None]:
    set_request_id(None)
    yield
    set_request_id(None)


def test_ok_returns_json(client: ServiceClient, downstream: Downstream) -> None:
    assert client.request_json("POST", "/ok", json={"a": 1}) == {"ok": True, "echo": {"a": 1}}
    assert downstream.hits["/ok"] == 1


def test_request_id_is_forwarded(client: ServiceClient, downstream: Downstream) -> None:
    set_request_id("rid-forward-1")
    client.request_json("GET", "/ok")
    assert downstream.headers_seen[-1].get("X-Request-ID") == "rid-forward-1"


def test_no_request_id_header_without_one(client: ServiceClient, downstream: Downstream) -> None:
    client.request_json("GET", "/ok")
    assert "X-Request-ID" not in downstream.headers_seen[-1]


def test_connection_refused_is_dependency_unavailable() -> None:
    svc = ServiceClient("gone", f"http://127.0.0.1:{free_port()}", retry_backoff_s=0.0)
    try:
        with pytest.raises(DependencyUnavailable) as info:
            svc.request("GET", "/ok")
    finally:
        svc.close()
    assert info.value.status == 503
    assert info.value.code == "dependency_unavailable"
    assert info.value.dependency == "gone"


def test_read_timeout_is_dependency_timeout_and_not_retried(
    client: ServiceClient, downstream: Downstream
) -> None:
    with pytest.raises(DependencyTimeout) as info:
        client.request("POST", "/slow", json={})
    assert info.value.status == 504
    assert info.value.code == "dependency_timeout"
    downstream.release.set()
    assert downstream.hits["/slow"] == 1


def test_per_call_read_timeout(downstream: Downstream) -> None:
    svc = ServiceClient("down", downstream.url, read_timeout_s=60.0)
    try:
        with pytest.raises(DependencyTimeout):
            svc.request("GET", "/slow", read_timeout_s=0.3)
    finally:
        svc.close()


def test_downstream_500_is_bad_gateway_sent_once(
    client: ServiceClient, downstream: Downstream
) -> None:
    with pytest.raises(BadGateway) as info:
        client.request("POST", "/fail500", json={"x": 1})
    assert info.value.status == 502
    assert info.value.code == "bad_gateway"
    assert "it broke" in info.value.message
    assert info.value.details == {"status": 500, "code": "boom"}
    assert downstream.hits["/fail500"] == 1  # a 5xx is never retried


def test_downstream_5xx_without_envelope_is_bad_gateway(
    client: ServiceClient, downstream: Downstream
) -> None:
    with pytest.raises(BadGateway) as info:
        client.request("GET", "/fail503-html")
    assert info.value.status == 502
    assert downstream.hits["/fail503-html"] == 1


def test_downstream_4xx_passes_status_code_and_details(
    client: ServiceClient, downstream: Downstream
) -> None:
    with pytest.raises(DownstreamError) as info:
        client.request("DELETE", "/reject404")
    assert info.value.status == 404
    assert info.value.code == "document_not_found"
    assert info.value.message == "no doc"
    assert info.value.details == {"id": "d1"}
    assert info.value.to_dict("r")["error"]["code"] == "document_not_found"
    assert downstream.hits["/reject404"] == 1


def test_a_downstream_429_is_passed_on_with_its_retry_after(
    client: ServiceClient, downstream: Downstream
) -> None:
    """A shed request was not processed: the caller is told when to come back, not a bare 429."""
    with pytest.raises(Overloaded) as info:
        client.request_json("POST", "/shed", json={})
    assert info.value.status == 429
    assert info.value.headers["Retry-After"] == "7"
    assert downstream.hits["/shed"] == 1


def test_downstream_4xx_without_envelope(client: ServiceClient) -> None:
    with pytest.raises(DownstreamError) as info:
        client.request("POST", "/reject422-plain", json={})
    assert info.value.status == 422
    assert info.value.code == "downstream_error"


def test_non_json_success_body_is_bad_gateway(client: ServiceClient) -> None:
    with pytest.raises(BadGateway):
        client.request_json("GET", "/not-json")


def test_retries_only_for_connection_errors(client: ServiceClient) -> None:
    retry = client.session.get_adapter("http://127.0.0.1").max_retries
    assert retry.connect == 2
    assert not retry.read
    assert retry.status == 0
    assert retry.other == 0


def test_connection_refused_is_retried_until_the_server_listens() -> None:
    """A port that starts listening during the client's retries gets the request."""
    port = free_port()
    svc = ServiceClient(
        "late", f"http://127.0.0.1:{port}", connect_retries=30, retry_backoff_s=0.05
    )
    server_box: dict[str, Downstream] = {}

    def start_late() -> None:
        # Starting the server only once the client has failed at least once: poll for it.
        time.sleep(0.3)
        server = Downstream.__new__(Downstream)
        ThreadingHTTPServer.__init__(server, ("127.0.0.1", port), _Handler)
        server.hits, server.headers_seen = {}, []
        server.lock, server.release = threading.Lock(), threading.Event()
        server_box["server"] = server
        server.serve_forever(0.05)

    thread = threading.Thread(target=start_late, daemon=True)
    thread.start()
    try:
        assert svc.request_json("GET", "/ok") == {"ok": True, "echo": None}
        assert server_box["server"].hits["/ok"] == 1
    finally:
        svc.close()
        thread.join(timeout=0.1)
        if "server" in server_box:
            server_box["server"].shutdown()
            server_box["server"].server_close()
        thread.join(timeout=10)


class DroppingServer:
    """A raw socket server that reads one request, then closes without answering."""

    def __init__(self) -> None:
        import socket

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.requests: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                self.requests.append(connection.recv(65536))

    def close(self) -> None:
        self.sock.close()


def test_a_post_dropped_after_it_was_sent_goes_nowhere_else(downstream: Downstream) -> None:
    dropping = DroppingServer()
    client = ServiceClient(
        "down", [dropping.url, downstream.url], retry_backoff_s=0.0, replica_cooldown_s=0.0
    )
    # Start every request at the dropping replica.
    client.replicas.candidates = lambda: [dropping.url, downstream.url]  # type: ignore[method-assign]
    try:
        with pytest.raises(BadGateway) as caught:
            client.request_json("POST", "/ok", json={"crash": "me"})
        assert caught.value.status == 502
        assert caught.value.code == "connection_lost"
        assert len(dropping.requests) == 1
        assert b"POST /ok" in dropping.requests[0]
        assert downstream.hits.get("/ok", 0) == 0
        # A read can be repeated safely: it moves on to the next replica.
        assert client.request_json("GET", "/ok") == {"ok": True, "echo": None}
        assert downstream.hits["/ok"] == 1
    finally:
        client.close()
        dropping.close()


def test_a_refused_connection_fails_over_even_for_a_post(downstream: Downstream) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    client = ServiceClient("down", [closed, downstream.url], connect_retries=0, retry_backoff_s=0.0)
    client.replicas.candidates = lambda: [closed, downstream.url]  # type: ignore[method-assign]
    try:
        assert client.request_json("POST", "/ok", json={"n": 1})["echo"] == {"n": 1}
        assert downstream.hits["/ok"] == 1
    finally:
        client.close()


def test_a_read_sent_as_post_may_be_marked_safe_to_repeat(downstream: Downstream) -> None:
    dropping = DroppingServer()
    client = ServiceClient("down", [dropping.url, downstream.url], retry_backoff_s=0.0)
    client.replicas.candidates = lambda: [dropping.url, downstream.url]  # type: ignore[method-assign]
    try:
        body = client.request_json("POST", "/ok", json={"q": "search"}, idempotent=True)
        assert body["echo"] == {"q": "search"}
        assert len(dropping.requests) == 1
        assert downstream.hits["/ok"] == 1
    finally:
        client.close()
        dropping.close()


def test_https_replicas_expanded_from_one_name_keep_that_name_for_tls(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two HTTPS servers on two addresses, one certificate for the name both resolve from."""
    import ssl
    import subprocess

    from qa_common.http_client import ReplicaPool

    # requests prefers these to the session's own trust setting.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=replicas.test", "-addext", "subjectAltName=DNS:replicas.test"]
    command += ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    port = free_port()
    servers = []
    for address in ("127.0.0.1", "127.0.0.2"):
        server = Downstream.__new__(Downstream)
        ThreadingHTTPServer.__init__(server, (address, port), _Handler)
        server.hits, server.headers_seen = {}, []
        server.lock, server.release = threading.Lock(), threading.Event()
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
    client = ServiceClient("tls", f"https://replicas.test:{port}", retry_backoff_s=0.0)
    client.replicas = ReplicaPool(
        [f"https://replicas.test:{port}"], resolve=lambda _host, _port: ["127.0.0.1", "127.0.0.2"]
    )
    client.session.verify = str(cert)
    try:
        for _ in range(4):
            assert client.request_json("GET", "/ok") == {"ok": True, "echo": None}
        # Both addresses served, each verified against the name, which was also the Host.
        assert [s.hits.get("/ok") for s in servers] == [2, 2]
        assert {h["Host"] for s in servers for h in s.headers_seen} == {f"replicas.test:{port}"}
    finally:
        client.close()
        for server in servers:
            server.shutdown()
            server.server_close()
