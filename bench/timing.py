"""Time the methods an operation calls, in place, for a benchmark's breakdown."""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from typing import Any


def time_method(owner: Any, method: str, label: str, seconds: MutableMapping[str, float]) -> None:
    """Replace ``owner.method`` by a wrapper adding its running time to ``seconds[label]``."""
    original: Callable[..., Any] = getattr(owner, method)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - started

    setattr(owner, method, timed)
