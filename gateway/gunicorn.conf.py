"""Gunicorn settings for the gateway; every value can be overridden from the environment.

The gateway holds no model: it waits on HTTP calls, so threads are cheap and plentiful.
"""

import os

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
worker_class = "gthread"
workers = int(os.environ.get("GATEWAY_WORKERS", "2"))
threads = int(os.environ.get("GATEWAY_THREADS", "16"))
timeout = int(os.environ.get("GATEWAY_TIMEOUT_S", "120"))
graceful_timeout = 30
keepalive = 5
# Several services on one machine would fight over gunicorn's one default control socket path.
control_socket_disable = True
accesslog = None  # the app writes its own access line, with the request id
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each worker counts in its own files; /metrics merges them (see qa_common.web).
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-metrics-")


def child_exit(_server, worker):
    """Drop a dead worker's live gauges from the merged metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
