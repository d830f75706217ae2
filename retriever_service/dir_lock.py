"""One process per embedded Chroma directory: a lock file held for the life of the process."""

from __future__ import annotations

import fcntl
import os
import threading

from qa_common.errors import ServiceError

LOCK_FILE = ".retriever.lock"
# Real path → open descriptor: several stores of one process share a directory's lock.
_held: dict[str, int] = {}
_guard = threading.Lock()


class DirectoryLocked(ServiceError):
    """Another process has the embedded Chroma directory open."""

    status = 503
    code = "store_locked"


def lock_directory(path: str) -> None:
    """Hold ``path`` for this process; raise ``DirectoryLocked`` when another process does.

    Two processes writing one embedded Chroma directory (an ``ingest --in-process`` beside a
    running retriever) corrupt each other's view of it. The lock is released when the process
    ends, however it ends.
    """
    real = os.path.realpath(path)
    with _guard:
        if real in _held:
            return
        os.makedirs(real, exist_ok=True)
        descriptor = os.open(os.path.join(real, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise DirectoryLocked(
                f"The embedded Chroma directory {real} is in use by another process (pid "
                f"{owner}). It belongs to one process: stop that one, or run a Chroma server "
                "(CHROMA_HOST) that several processes can share."
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        _held[real] = descriptor
