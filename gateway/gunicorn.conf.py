"""Gunicorn settings for the gateway; every value can be overridden from the environment.

The gateway holds no model: it waits on HTTP calls, so threads are cheap and plentiful.
"""

import os

from qa_common import gunicorn_support

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

gunicorn_support.share_metrics_between_workers("gateway", workers)
# Gunicorn finds its server hooks by name in this module.
child_exit = gunicorn_support.child_exit
