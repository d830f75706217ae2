"""What every service's gunicorn.conf.py needs: metrics that add up across worker processes.

Gunicorn puts its working directory on ``sys.path`` before it reads a config file, so the
services' config files can import this module (the repository root, or /app in the images).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any


def share_metrics_between_workers(service: str, workers: int) -> None:
    """With several workers, let each count in its own files that /metrics merges."""
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Set in the master before the fork, so every worker's prometheus_client sees it.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=f"{service}-metrics-")


def child_exit(_server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges from the merged metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
