"""Run the system on this machine: ``python -m scripts.run_local`` (via scripts/start.sh).

Starts each service under gunicorn on 127.0.0.1 with embedded ChromaDB, ingests data/ (what is
already there is skipped), streams every service's log with a prefix, and stops them all on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

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


def explain_generator(generator: ServiceProcess, wait_s: float = 600.0) -> None:
    """Wait for the generator's model; if it cannot load, say why and how to fix it, once."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{generator.url}/readyz", timeout=5)
        except requests.RequestException:
            time.sleep(1)
            continue
        if response.status_code == 200:
            body = response.json()
            why = body.get("fallback_reason")
            serves = f"{body.get('model')} (fallback: {why})" if why else str(body.get("model"))
            say(f"generator_service serves {serves}; answers are checked against the sources")
            return
        message = response.json().get("error", {}).get("message", "").splitlines()[0]
        if "not loaded" in message or "could not" in message.lower():
            say(
                f"the generator's model could not be loaded ({message[:160]}); answers are "
                "extractive. Fix: let it download once (network access, HF_HOME), or set "
                "GENERATOR_MODEL to a local model directory."
            )
            return
        time.sleep(1)
    say("the generator is still loading its model; answers are extractive until it is ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/start.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO_ROOT / "data"), help="folder to ingest")
    parser.add_argument("--no-ingest", action="store_true", help="start without ingesting")
    parser.add_argument(
        "--gateway-port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8000"))
    )
    parser.add_argument(
        "--retriever-port", type=int, default=int(os.environ.get("RETRIEVER_PORT", "8001"))
    )
    parser.add_argument(
        "--generator-port", type=int, default=int(os.environ.get("GENERATOR_PORT", "8002"))
    )
    args = parser.parse_args(argv)

    state_dir = Path(os.environ.get("QA_STATE_DIR", REPO_ROOT / "var"))
    state_dir.mkdir(parents=True, exist_ok=True)
    chroma_path = os.environ.get("CHROMA_PATH", str(state_dir / "chroma"))
    if (Path(chroma_path) / "chroma.sqlite3").exists():
        # A store an earlier version wrote is re-keyed once; on a current one this only checks.
        say("checking the document store's layout")
        upgraded = subprocess.run(
            [sys.executable, "-m", "retriever_service.migrate"],
            env={**os.environ, "CHROMA_PATH": chroma_path},
            check=False,
        )
        if upgraded.returncode != 0:
            say("some stored documents must be ingested again; see above")
    retriever = ServiceProcess(
        "retriever_service",
        port=args.retriever_port,
        env={"CHROMA_PATH": chroma_path},
        on_output=_prefixed("retriever"),
    )
    generator = ServiceProcess(
        "generator_service",
        port=args.generator_port,
        # DialoGPT-medium when it can be loaded (downloaded or cached), else the bundled model.
        env={
            "GENERATOR_MODEL_FALLBACK": os.environ.get(
                "GENERATOR_MODEL_FALLBACK", "smollm2-135m-instruct"
            )
        },
        on_output=_prefixed("generator"),
    )
    gateway = ServiceProcess(
        "gateway",
        port=args.gateway_port,
        env={"RETRIEVER_URL": retriever.url, "GENERATOR_URL": generator.url},
        on_output=_prefixed("gateway"),
    )
    services = [retriever, generator, gateway]

    stopping = threading.Event()

    def request_stop(_signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    try:
        for service in services:
            say(f"starting {service.package} on {service.url}")
            service.start()
        retriever.wait_ready(timeout_s=300)
        say("retriever_service is ready")
        gateway.wait_ready(timeout_s=120)
        say("gateway is ready")
        # The generator may take minutes (a first download) or never be ready (no network for
        # the download): the gateway answers extractively meanwhile, so nothing waits for it.
        threading.Thread(target=explain_generator, args=(generator,), daemon=True).start()
        if not args.no_ingest:
            from retriever_service import ingest

            say(f"ingesting {args.data} (documents already there are skipped)")
            code = ingest.main([args.data, "--url", retriever.url, "--quiet"])
            if code != 0:
                say("some documents could not be ingested; see above")
        say(f"chat page:      {gateway.url}/")
        say(f"API:            {gateway.url}/v1/ask   (documentation: {gateway.url}/docs)")
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
