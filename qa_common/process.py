"""Start a service under gunicorn as a child process and wait until it is ready.

Used by the local launcher, the evaluation and benchmark tools, and the tests: they all run the
services exactly as production does, on 127.0.0.1 and a free port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One gunicorn-served service: ``start()``, ``wait_ready()``, ``stop()``."""

    def __init__(
        self,
        package: str,
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        extra_args: list[str] | None = None,
        on_output: Callable[[str], None] | None = None,
    ) -> None:
        self.package = package
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(env or {})
        self.log_path = log_path
        self.extra_args = list(extra_args or [])
        self.on_output = on_output
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file = None

    def command(self) -> list[str]:
        """Return the gunicorn command line the Dockerfiles run too."""
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(REPO_ROOT / self.package / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{self.port}",
            *self.extra_args,
            f"{self.package}.app:create_app()",
        ]

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.env}
        env.setdefault("PYTHONUNBUFFERED", "1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        stdout: Any = subprocess.DEVNULL
        if self.on_output is not None:
            stdout = subprocess.PIPE
        elif self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            stdout = self._log_file
        self.process = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if self.on_output is not None:
            threading.Thread(target=self._relay_output, daemon=True).start()
        return self

    def _relay_output(self) -> None:
        process, emit = self.process, self.on_output
        if process is None or process.stdout is None or emit is None:
            return
        for raw in process.stdout:
            emit(raw.decode(errors="replace").rstrip("\n"))

    def wait_ready(self, timeout_s: float = 120.0, path: str = "/readyz") -> None:
        """Poll the readiness endpoint until it answers 200; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.package} exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                response = requests.get(self.url + path, timeout=5)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:300]}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.package} not ready after {timeout_s}s ({last}): {self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop gracefully (SIGTERM), then kill what is left of the process group."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """Kill the process group at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
