"""Deterministic jitter: spreads a minute's Cloud Tasks over the minute, reproducibly."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from shared.instants import format_slot

__all__ = ["jitter_offset"]

_RESOLUTION_MS = 1000


def jitter_offset(subscription_id: str, slot: datetime, max_seconds: int) -> timedelta:
    """A delay in ``[0, max_seconds]`` seconds (millisecond steps) for this subscription and slot.

    Deterministic -- the same (subscription, slot) always gets the same offset, so a redelivered
    due message schedules its tasks at the same time -- and close to uniform, because it is
    SHA-256 of ``"<id>|<slot as UTC RFC 3339>"`` reduced modulo the number of millisecond steps.
    A new slot gets a new offset, so no subscription is always last in its minute.
    """
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, int) or max_seconds < 0:
        raise ValueError(f"max_seconds must be a non-negative integer, got {max_seconds!r}")
    if slot.tzinfo is None or slot.utcoffset() is None:
        raise ValueError(f"slot must be timezone-aware, got naive {slot.isoformat()}")
    if max_seconds == 0:
        return timedelta(0)
    key = f"{subscription_id}|{format_slot(slot)}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    steps = max_seconds * _RESOLUTION_MS + 1
    # 64 bits reduced modulo at most 59_001 steps: the modulo bias is below 1e-14.
    return timedelta(milliseconds=int.from_bytes(digest[:8], "big") % steps)
