"""Gunicorn settings for the generator: ``gunicorn -c generator_service/gunicorn.conf.py
'generator_service.app:create_app()'``.

Each worker process loads one model and runs one batching loop; its threads only wait on that
loop, so a worker needs at least as many threads as requests it should batch plus those it lets
wait. On a small CPU one worker is right: a second copy of the model competes for the same cores.
"""

import os

from qa_common import gunicorn_support

bind = os.environ.get("GENERATOR_BIND", "127.0.0.1:8002")  # 0.0.0.0:8002 in a container
workers = int(os.environ.get("GENERATOR_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("GENERATOR_THREADS", "48"))
# The app factory runs in each worker after the fork: the model never crosses a fork.
preload_app = False
# Loading DialoGPT-medium from disk takes a while; generation itself is bounded by
# GENERATOR_TIMEOUT_S, and streaming responses may legitimately last that long.
timeout = int(os.environ.get("GENERATOR_WORKER_TIMEOUT_S", "180"))
graceful_timeout = int(os.environ.get("GENERATOR_GRACEFUL_TIMEOUT_S", "30"))
keepalive = 5
# Three services on one machine would fight over gunicorn's one default control socket path.
control_socket_disable = True
accesslog = None  # the app writes its own access log line with the request id
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

gunicorn_support.share_metrics_between_workers("generator", workers)
# Gunicorn finds its server hooks by name in this module.
child_exit = gunicorn_support.child_exit


def worker_exit(_server, worker):
    """Stop the batching loop so that waiting requests get an answer, not a reset."""
    app = getattr(worker, "wsgi", None)
    generator = getattr(app, "extensions", {}).get("generator") if app is not None else None
    if generator is not None:
        generator.close()
