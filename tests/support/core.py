"""Building subscription documents for the scheduling-core tests (unit and integration)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from emulators.stack import environment
from shared.scheduling import iter_subscription_slots, next_run_for
from shared.subscription import Subscription, shard_for

CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def utc(text: str) -> datetime:
    """``"2026-03-08T07:00"`` → an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def subscription_doc(
    subscription_id: str,
    *,
    schedule: dict[str, Any],
    start: datetime,
    shard_count: int,
    sources: Sequence[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A complete document whose ``next_run_at`` is its first slot at or after ``start``."""
    doc: dict[str, Any] = {
        "name": f"Subscription {subscription_id}",
        "paused": False,
        "status": "active",
        "schedule": schedule,
        "sources": list(sources or [{"id": "feed", "kind": "rss", "params": {}}]),
        "shard": shard_for(subscription_id, shard_count),
        "created_at": CREATED,
        "updated_at": CREATED,
        **fields,
    }
    subscription = Subscription.from_document(subscription_id, doc)
    doc["next_run_at"] = next_run_for(subscription, start - timedelta(microseconds=1))
    return doc


def expected_slots(
    subscription_id: str, doc: dict[str, Any], start: datetime, end: datetime
) -> list[datetime]:
    """The subscription's slots ``start <= s <= end`` (on-time ticks publish exactly these)."""
    subscription = Subscription.from_document(subscription_id, doc)
    return list(iter_subscription_slots(subscription, start - timedelta(microseconds=1), end))


@contextlib.contextmanager
def emulator_environment(env: Mapping[str, str]) -> Iterator[None]:
    """Point Google clients built inside the block at the stack's emulators, then restore."""
    keys = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")
    with environment({k: env[k] for k in keys}):
        yield
