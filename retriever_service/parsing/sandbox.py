"""Run untrusted parsers in a child process, killed past a time limit and bounded in memory."""

from __future__ import annotations

import atexit
import concurrent.futures
import logging
import multiprocessing
import threading
from collections.abc import Callable

from retriever_service.parsing.formats import SANDBOXED_TYPES, parse_document
from retriever_service.parsing.limits import ParseLimits
from retriever_service.parsing.model import FileRejected, ParsedDocument

log = logging.getLogger(__name__)


def _limit_memory(memory_mb: int) -> None:
    """Cap the child's address space: a decompression bomb fails there, not in the service."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = memory_mb * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    # The soft limit only: raising the hard one is refused where it is already lower.
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def describe(exc: BaseException) -> str:
    """Name an exception in a short line, for a per-file reason."""
    text = str(exc) or ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _parse_in_child(kind: str, data: bytes, limits: ParseLimits) -> ParsedDocument:
    try:
        return parse_document(kind, data, limits)
    except FileRejected:
        raise
    except MemoryError:
        raise FileRejected(
            "too_large", f"parsing the file needs more than {limits.memory_mb} MB (PARSE_MEMORY_MB)"
        ) from None
    except Exception as exc:  # a parser library failing on a hostile file: that file's error
        raise FileRejected("corrupt", f"the file cannot be parsed ({describe(exc)})") from None


class FileParser:
    """Parse files by type: text in process, PDF, Word and HTML in a pool of child processes."""

    def __init__(
        self,
        limits: ParseLimits,
        *,
        workers: int = 1,
        target: Callable[[str, bytes, ParseLimits], ParsedDocument] | None = None,
    ) -> None:
        self.limits = limits
        self.workers = workers
        # What the child runs: a module-level function (spawn imports it by name).
        self._target = target or _parse_in_child
        self._pool = None
        self._lock = threading.Lock()

    def _get_pool(self):
        from pebble import ProcessPool

        with self._lock:
            if self._pool is None:
                # Stopped at exit, so that no parser process outlives the service.
                atexit.register(self.close)
                # spawn: the service's threads and model are not copied into the child.
                self._pool = ProcessPool(
                    max_workers=self.workers,
                    initializer=_limit_memory,
                    initargs=(self.limits.memory_mb,),
                    context=multiprocessing.get_context("spawn"),
                )
            return self._pool

    def parse(self, kind: str, data: bytes) -> ParsedDocument:
        """Parse one file's bytes; raise ``FileRejected`` with the reason when it cannot be."""
        if kind not in SANDBOXED_TYPES:
            return parse_document(kind, data, self.limits)
        from pebble import ProcessExpired

        future = self._get_pool().schedule(
            self._target, args=(kind, data, self.limits), timeout=self.limits.timeout_s
        )
        try:
            return future.result()
        except concurrent.futures.TimeoutError:
            raise FileRejected(
                "parse_timeout",
                f"parsing took longer than {self.limits.timeout_s:g} s (PARSE_TIMEOUT_S)",
            ) from None
        except ProcessExpired as exc:
            log.warning("the %s parser died (exit code %s)", kind, exc.exitcode)
            raise FileRejected(
                "parse_failed", f"the {kind} parser stopped on this file (exit code {exc.exitcode})"
            ) from None
        except FileRejected:
            raise
        except Exception as exc:  # the pool itself failing (unpicklable result, broken pipe)
            log.warning("the %s parser failed: %s", kind, describe(exc))
            raise FileRejected(
                "parse_failed", f"the {kind} parser failed ({describe(exc)})"
            ) from None

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join()
                self._pool = None
