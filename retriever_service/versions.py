"""Document versions: how a document changes atomically on a store without transactions.

Every write of a document stores its chunks under a fresh version (the version is part of each
chunk id), then commits one version record, a single-record write that Chroma applies whole. The
document's current version is its record with the highest ``(seq, version)``; readers return only
chunks of current versions, so a reader sees a document's old chunks or its new ones, never both
and never part of one, whatever process dies when.

Commit order: a writer reads the document's records, takes ``seq`` above every one it saw (and
not below its clock), commits, then reads again. It acknowledges only if its record is still the
highest; otherwise a concurrent write won and it answers 409 and removes its own version. So the
last write acknowledged is the one kept. Superseded versions are removed after the switch;
a version with chunks but no record (a writer died before committing) is invisible and removed
by the start-up sweep once older than a grace period, so that a write in flight is never touched.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

VersionState = Literal["live", "deleted"]
_VERSION = re.compile(r"v[0-9a-f]{16}")


def new_version() -> str:
    """Return a fresh, unique version name."""
    return "v" + secrets.token_hex(8)


def derived_version(*parts: str) -> str:
    """Return a version named by its content: a re-run of the same migration writes the same ids."""
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()
    return "v" + digest[:16]


def versioned_chunk_id(document_id: str, version: str, position: int) -> str:
    """Return the id of a chunk of one version of a document."""
    return f"{document_id}@{version}:{position}"


def parse_chunk_id(chunk_id: str) -> tuple[str, str] | None:
    """Return ``(document_id, version)`` of a versioned chunk id, or None for any other id."""
    head, _, position = chunk_id.rpartition(":")
    document_id, _, version = head.rpartition("@")
    if not document_id or not position.isdigit() or not _VERSION.fullmatch(version):
        return None
    return document_id, version


def next_seq(seen: Iterable[VersionRecord]) -> int:
    """Return a commit sequence above every record seen and not below this machine's clock.

    Taking it above what was read makes a write that starts after another one's acknowledgement
    win over it even when the replicas' clocks disagree.
    """
    return max([time.time_ns() // 1000, *(r.seq + 1 for r in seen)])


@dataclass(frozen=True)
class VersionRecord:
    """One committed version of a document, or the tombstone of its deletion."""

    collection: str
    document_id: str
    version: str
    seq: int
    state: VersionState
    content_hash: str = ""
    chunk_count: int = 0
    ingested_at: float = 0.0

    @property
    def record_id(self) -> str:
        # Hashed: collection names and document ids may hold any character.
        key = hashlib.sha256(f"{self.collection}\x00{self.document_id}".encode()).hexdigest()
        return f"{key[:32]}@{self.version}"

    @property
    def order(self) -> tuple[int, str]:
        return (self.seq, self.version)

    @property
    def live(self) -> bool:
        return self.state == "live"


def current_versions(records: Iterable[VersionRecord]) -> dict[str, VersionRecord]:
    """Return each document's current record: its highest ``(seq, version)``."""
    current: dict[str, VersionRecord] = {}
    for record in records:
        best = current.get(record.document_id)
        if best is None or record.order > best.order:
            current[record.document_id] = record
    return current
