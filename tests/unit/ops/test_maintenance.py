"""Maintenance jobs on an in-memory store: expire and recompute-next-run, each run twice."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import load_settings
from shared.errors import InvalidRequestError
from shared.ops.delivery_schedules import sync_delivery_schedules
from shared.ops.subscriptions import write_subscription
from shared.subscription import Subscription
from shared.usecases.maintenance import JobContext, run_job
from tests.unit.core.fakes import FakeSubscriptionStore
from tests.unit.deliveries.test_digests_on_tick import FakeAdmin

NOW = datetime(2026, 3, 7, 9, 0, 30, tzinfo=UTC)
SETTINGS = load_settings(environ={})


def seeded() -> FakeSubscriptionStore:
    store = FakeSubscriptionStore()
    for sub_id, extra in (
        ("ends-soon", {"ends_at": "2026-03-07T10:00:00Z"}),
        ("forever", {}),
        ("paused", {"paused": True}),
    ):
        raw: dict[str, Any] = {
            "name": sub_id,
            "schedule": {"every": 900},
            "sources": [{"id": "s", "kind": "rss"}],
            **extra,
        }
        write_subscription(store, sub_id, raw, now=lambda: NOW, shard_count=16, known_kinds=["rss"])
    return store


def ctx(
    store: FakeSubscriptionStore,
    now: datetime,
    dry_run: bool = False,
    schedules: FakeAdmin | None = None,
) -> JobContext:
    def no_ledger() -> Any:
        raise AssertionError("these jobs do not touch the ledger")

    admin = schedules or FakeAdmin()
    return JobContext(
        SETTINGS, now, lambda: store, no_ledger, dry_run=dry_run, schedules_factory=lambda: admin
    )


def test_expire_twice(caplog: pytest.LogCaptureFixture) -> None:
    store = seeded()
    later = NOW + timedelta(hours=2)
    assert run_job("expire", {"job": "expire"}, ctx(store, later, dry_run=True))["expired"] == 1
    assert store.docs["ends-soon"]["status"] == "active"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="shared.usecases.maintenance"):
        first = run_job("expire", {"job": "expire"}, ctx(store, later))
    # Taken inside the block: once another test has configured logging, records of the other
    # runs would be captured too.
    records = [r for r in caplog.records if getattr(r, "job", None) == "expire"]
    assert first == {"expired": 1, "conflicts": 0}
    assert store.docs["ends-soon"]["status"] == "expired"
    assert store.docs["ends-soon"]["next_run_at"] is None
    assert store.docs["forever"]["status"] == "active"
    assert run_job("expire", {"job": "expire"}, ctx(store, later))["expired"] == 0
    assert len(records) == 1 and records[0].counts == {"expired": 1, "conflicts": 0}  # type: ignore[attr-defined]


def test_recompute_fixes_stale_and_shard_then_changes_nothing() -> None:
    store = seeded()
    data = dict(store.docs["forever"])
    store.update("forever", {"next_run_at": None, "shard": 99}, if_updated_at=None)
    later = NOW + timedelta(minutes=20)
    counts = run_job("recompute-next-run", {"job": "recompute-next-run"}, ctx(store, later))
    assert counts["updated"] == 1 and counts["skipped"] == 1  # the paused one
    fixed = store.docs["forever"]
    assert fixed["next_run_at"] == datetime(2026, 3, 7, 9, 30, tzinfo=UTC)
    assert fixed["shard"] == data["shard"]
    again = run_job("recompute-next-run", {"job": "recompute-next-run"}, ctx(store, later))
    assert again["updated"] == 0 and again["unchanged"] == 2


def _with_digest(store: FakeSubscriptionStore, cron: str) -> Subscription:
    deliveries = [
        {
            "id": "digest",
            "channel": "email",
            "to": ["pr@acme.example"],
            "schedule": {"cron": cron, "timezone": "UTC"},
            "format": "digest",
        }
    ]
    store.update("forever", {"deliveries": deliveries}, if_updated_at=None)
    return Subscription.from_document("forever", store.docs["forever"])


def test_recompute_puts_digests_back_on_their_cron_creates_missing_and_retires_deleted() -> None:
    store, admin = seeded(), FakeAdmin()
    subscription = _with_digest(store, "0 10 * * *")
    sync_delivery_schedules(admin, "forever", subscription, now=NOW)
    assert admin.docs["forever.digest"].next_run_at == datetime(2026, 3, 7, 10, tzinfo=UTC)
    # A wrong tick pushed it a year ahead; another delivery was never given a schedule.
    admin.docs["forever.digest"] = replace(
        admin.docs["forever.digest"], next_run_at=datetime(2027, 3, 7, 10, tzinfo=UTC)
    )
    job = {"job": "recompute-next-run"}
    dry = run_job("recompute-next-run", job, ctx(store, NOW, dry_run=True, schedules=admin))
    assert dry["digests_updated"] == 1
    assert admin.docs["forever.digest"].next_run_at == datetime(2027, 3, 7, 10, tzinfo=UTC)

    counts = run_job("recompute-next-run", job, ctx(store, NOW, schedules=admin))
    assert (counts["digests_updated"], counts["digests_created"]) == (1, 0)
    assert admin.docs["forever.digest"].next_run_at == datetime(2026, 3, 7, 10, tzinfo=UTC)
    # A slot already due (not yet sent) stays due: recompute never skips a digest.
    due = datetime(2026, 3, 6, 10, tzinfo=UTC)
    admin.docs["forever.digest"] = replace(admin.docs["forever.digest"], next_run_at=due)
    again = run_job("recompute-next-run", job, ctx(store, NOW, schedules=admin))
    assert again["digests_updated"] == 0 and admin.docs["forever.digest"].next_run_at == due

    del admin.docs["forever.digest"]
    repaired = run_job("recompute-next-run", job, ctx(store, NOW, schedules=admin))
    assert repaired["digests_created"] == 1 and "forever.digest" in admin.docs

    del store.docs["forever"]
    one = {**job, "subscription_id": "forever"}
    gone = run_job("recompute-next-run", one, ctx(store, NOW, schedules=admin))
    assert (gone["missing"], gone["digests_retired"]) == (1, 1)
    assert admin.docs["forever.digest"].next_run_at is None


def test_unknown_job_is_permanent() -> None:
    with pytest.raises(InvalidRequestError):
        run_job("defragment", {}, ctx(FakeSubscriptionStore(), NOW))
