"""The two ways the dispatcher writes an instant, so every producer writes it the same way."""

from __future__ import annotations

import functools
from datetime import UTC, datetime


def format_instant(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and the microseconds ``datetime`` holds (logs, documents)."""
    return value.astimezone(UTC).isoformat().removesuffix("+00:00") + "Z"


@functools.lru_cache(maxsize=1024)
def format_slot(value: datetime) -> str:
    """A slot as RFC 3339 UTC to the second (``2026-01-05T09:00:00Z``).

    This text is part of the dispatch key, so select, fanout and the key must all use it.
    Cached: ``strftime`` costs ~4 µs here and fanout writes the same slot about 15 times per
    due message (keys, task names, jitter, bodies, logs); equal instants give equal text, so
    a cache keyed by the (immutable) datetime cannot answer wrong.
    """
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
