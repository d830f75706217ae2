"""Keep a collection in step with folders: find what a folder no longer holds, and watch it.

A document ingested from a folder carries ``source_root`` (the folder's absolute path) and
``source`` (its file's path inside it). Syncing deletes the documents of that folder whose file
is gone, or whose record is no longer in its file. Documents stored before ``source_root`` existed
are matched by their ``source`` alone, when that file is still in the folder, so that the first
sync also removes records stored under the ids of an older version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE_ROOT = "source_root"


def folder_key(folder: Path) -> str:
    """Return the identity of a folder in stored metadata: its absolute path."""
    return str(folder.resolve())


def stale_documents(
    stored: Iterable[Mapping[str, Any]],
    key: str,
    current: Mapping[str, set[str]],
    *,
    unreadable: set[str],
    scope: set[str] | None = None,
) -> list[str]:
    """Return ids of stored documents of this folder that its files no longer hold.

    ``current`` maps each file (relative path) read now to the ids it holds; ``unreadable`` files
    keep their stored documents (a file saved half-way is not a deletion); ``scope`` limits the
    sync to these files (a watched change), None meaning the whole folder.
    """
    current_ids = {i for ids in current.values() for i in ids}
    stale = []
    for document in stored:
        metadata = document.get("metadata") or {}
        source = document.get("source") or metadata.get("source")
        if document["id"] in current_ids or source in unreadable:
            continue
        # A scope entry may be a folder that was moved away or deleted whole.
        if scope is not None and not any(
            source == path or str(source).startswith(f"{path}/") for path in scope
        ):
            continue
        root = metadata.get(SOURCE_ROOT)
        if root == key or (root is None and source in current):
            stale.append(str(document["id"]))
    return stale


class FolderWatcher:
    """Collect file changes under folders and hand them over in debounced batches."""

    def __init__(
        self,
        folders: Iterable[Path],
        on_changes: Callable[[Path, set[str]], None],
        *,
        suffixes: Iterable[str],
        debounce_s: float = 1.0,
    ) -> None:
        self.folders = [f.resolve() for f in folders]
        self.on_changes = on_changes
        self.debounce_s = debounce_s
        self.suffixes = frozenset(suffixes)
        self._pending: dict[Path, set[str]] = {}
        self._last_event = 0.0
        self._first_event = 0.0
        self._lock = threading.Lock()

    def record(self, path: str) -> None:
        """Note that a path changed (created, modified, deleted, or moved from or to)."""
        resolved = Path(path).resolve()
        for folder in self.folders:
            if resolved == folder or folder not in resolved.parents:
                continue
            relative = resolved.relative_to(folder)
            if any(part.startswith(".") for part in relative.parts):
                return
            # A file of another type (a log written every second) must not hold the batch back;
            # a path without a suffix may be a folder moved or deleted whole.
            if relative.suffix and relative.suffix.lower() not in self.suffixes:
                return
            with self._lock:
                now = time.monotonic()
                if not self._pending:
                    self._first_event = now
                self._pending.setdefault(folder, set()).add(relative.as_posix())
                self._last_event = now
            return

    def run(self, stop: threading.Event) -> None:
        """Watch until ``stop`` is set; each batch waits until no event came for debounce_s."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for path in (event.src_path, getattr(event, "dest_path", "")):
                    if path:
                        watcher.record(str(path))

        observer = Observer()
        for folder in self.folders:
            observer.schedule(Handler(), str(folder), recursive=True)
        observer.start()
        try:
            while not stop.wait(min(0.2, self.debounce_s)):
                self.flush()
        finally:
            observer.stop()
            observer.join()

    def flush(self, *, force: bool = False) -> None:
        """Hand over the pending changes once the folder has been quiet for debounce_s."""
        with self._lock:
            now = time.monotonic()
            quiet = now - self._last_event >= self.debounce_s
            # Never more than 10 debounce periods behind, however busy the folder.
            overdue = now - self._first_event >= 10 * self.debounce_s
            if not self._pending or not (quiet or overdue or force):
                return
            pending, self._pending = self._pending, {}
        for folder, paths in pending.items():
            try:
                self.on_changes(folder, paths)
            except Exception:
                # The retriever restarting must not end the watch, nor lose the changes: they
                # are tried again after the next quiet period.
                log.exception("syncing %d changed files under %s failed", len(paths), folder)
                with self._lock:
                    self._pending.setdefault(folder, set()).update(paths)
                    self._last_event = time.monotonic()
