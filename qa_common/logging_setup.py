"""Logging configuration shared by the services: every line carries the service and request id."""

from __future__ import annotations

import json
import logging
import sys
import time

from qa_common.request_context import get_request_id


class _ContextFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        record.request_id = get_request_id() or "-"
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": getattr(record, "service", "-"),
            "request_id": getattr(record, "request_id", "-"),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s [%(request_id)s] %(name)s: %(message)s"


def configure_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Send all logs to stderr in one format with the service name and request id."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that log every HTTP call or telemetry attempt drown the request log.
    for noisy in ("urllib3", "httpx", "httpcore", "chromadb.telemetry", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Each connect retry is already reported, with the replica, by qa_common.http_client.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
