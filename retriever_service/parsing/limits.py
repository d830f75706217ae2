"""Bounds on what one file may cost to parse, and the zip check that enforces some of them."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

from retriever_service.parsing.model import FileRejected


@dataclass(frozen=True)
class ParseLimits:
    """Per-file bounds: pages, unzipped size and ratio, parse time, parser memory."""

    max_pages: int = 2000
    max_unzipped_bytes: int = 200 * 1024 * 1024
    max_compression_ratio: float = 100.0
    timeout_s: float = 60.0
    memory_mb: int = 2048


def check_zip(data: bytes, limits: ParseLimits, kind: str) -> None:
    """Refuse a zip container that is not one, or that would inflate past the limits."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise FileRejected("corrupt", f"not a valid {kind} file (not a zip archive)") from exc
    with archive:
        # The sizes a zip declares are checked here; the parser's memory limit catches a zip
        # that lies about them.
        total = sum(info.file_size for info in archive.infolist())
        packed = sum(info.compress_size for info in archive.infolist()) or 1
    if total > limits.max_unzipped_bytes:
        raise FileRejected(
            "too_large",
            f"{kind} file unpacks to {total:,} bytes, over the limit of "
            f"{limits.max_unzipped_bytes:,} (MAX_UNZIPPED_BYTES)",
        )
    if total / packed > limits.max_compression_ratio:
        raise FileRejected(
            "too_large",
            f"{kind} file is compressed {total / packed:.0f}:1, over the limit of "
            f"{limits.max_compression_ratio:.0f}:1 (a zip bomb?)",
        )
