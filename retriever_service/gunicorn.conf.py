"""Gunicorn settings for the retriever; every value can be overridden from the environment.

Embedded Chroma belongs to one process, so without CHROMA_HOST the retriever runs a single
worker whose threads share one model; with a Chroma server, RETRIEVER_WORKERS processes.
"""

import os

bind = os.environ.get("RETRIEVER_BIND", "127.0.0.1:8001")
worker_class = "gthread"
threads = int(os.environ.get("RETRIEVER_THREADS", "8"))
workers = int(os.environ.get("RETRIEVER_WORKERS", "1")) if os.environ.get("CHROMA_HOST") else 1
# Loading the model and opening Chroma take a few seconds; a large ingest batch takes longer.
timeout = int(os.environ.get("RETRIEVER_TIMEOUT_S", "300"))
graceful_timeout = 30
keepalive = 5
# Several services on one machine would fight over gunicorn's one default control socket path.
control_socket_disable = True
preload_app = False
accesslog = None  # the app writes its own access line, with the request id
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each worker counts in its own files; /metrics merges them (see qa_common.web).
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="retriever-metrics-")


def child_exit(_server, worker):
    """Drop a dead worker's live gauges from the merged metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
