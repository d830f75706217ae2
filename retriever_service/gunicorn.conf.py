"""Gunicorn settings for the retriever; every value can be overridden from the environment.

Embedded Chroma belongs to one process, so without CHROMA_HOST the retriever runs a single
worker whose threads share one model; with a Chroma server, RETRIEVER_WORKERS processes.
"""

import os

from qa_common import gunicorn_support

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

gunicorn_support.share_metrics_between_workers("retriever", workers)
# Gunicorn finds its server hooks by name in this module.
child_exit = gunicorn_support.child_exit
