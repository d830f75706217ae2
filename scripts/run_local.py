"""Run the system on this machine: ``python -m scripts.run_local`` (via scripts/start.sh).

Starts each service under gunicorn on 127.0.0.1 with embedded ChromaDB, ingests data/ (what is
already there is skipped), streams every service's log with a prefix, and stops them all on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from qa_common.process import REPO_ROOT, ServiceProcess

_print_lock = threading.Lock()
_COLORS = {"retriever": "\033[36m", "generator": "\033[35m", "gateway": "\033[33m"}


def _prefixed(name: str):
    color = _COLORS.get(name, "") if sys.stdout.isatty() else ""
    reset = "\033[0m" if color else ""

    def emit(line: str) -> None:
        with _print_lock:
            print(f"{color}{name:>9} |{reset} {line}", flush=True)

    return emit


def say(message: str) -> None:
    """Print a launcher line in the same stream as the service logs."""
    _prefixed("start")(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/start.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO_ROOT / "data"), help="folder to ingest")
    parser.add_argument("--no-ingest", action="store_true", help="start without ingesting")
    parser.add_argument(
        "--retriever-port", type=int, default=int(os.environ.get("RETRIEVER_PORT", "8001"))
    )
    args = parser.parse_args(argv)

    state_dir = Path(os.environ.get("QA_STATE_DIR", REPO_ROOT / "var"))
    state_dir.mkdir(parents=True, exist_ok=True)
    retriever = ServiceProcess(
        "retriever_service",
        port=args.retriever_port,
        env={"CHROMA_PATH": os.environ.get("CHROMA_PATH", str(state_dir / "chroma"))},
        on_output=_prefixed("retriever"),
    )
    services = [retriever]

    stopping = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        for service in services:
            say(f"starting {service.package} on {service.url}")
            service.start()
        for service in services:
            service.wait_ready(timeout_s=300)
            say(f"{service.package} is ready")
        if not args.no_ingest:
            from retriever_service import ingest

            say(f"ingesting {args.data} (documents already there are skipped)")
            code = ingest.main([args.data, "--url", retriever.url, "--quiet"])
            if code != 0:
                say("some documents could not be ingested; see above")
        say(f"retriever API:  {retriever.url}/v1/search   (docs: README.md)")
        say("press Ctrl-C to stop")
        while not stopping.is_set():
            for service in services:
                if service.process is not None and service.process.poll() is not None:
                    say(f"{service.package} exited with {service.process.returncode}; stopping")
                    return 1
            stopping.wait(1.0)
        return 0
    except (TimeoutError, RuntimeError) as exc:
        say(f"could not start: {exc}")
        return 1
    finally:
        say("stopping services")
        for service in reversed(services):
            service.stop()
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
