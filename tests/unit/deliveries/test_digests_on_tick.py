"""Digests on select's tick: collection first and unharmed, failures logged and retried by the
redelivered tick only when a retry can help; the claim-less planner; the admin's schedule sync."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import load_settings
from shared.dal.cloud_tasks import TaskCreateError
from shared.dal.records import AlreadyExists, DigestSchedule, StoreConflict
from shared.email_settings import load_email_settings
from shared.errors import DependencyUnavailableError, TaskRejectedError
from shared.ops.delivery_schedules import sync_delivery_schedules
from shared.subscription import Subscription
from shared.usecases.plan_deliveries import PlanDependencies
from shared.usecases.select_digests import DigestDependencies
from shared.usecases.select_due import DigestsFailedError, SelectDependencies, select_due
from tests.support.core import subscription_doc, utc
from tests.unit.core.fakes import FakePublisher, FakeSubscriptionStore, message
from tests.unit.deliveries.fakes import FakeSubscriptions, FakeTasks
from tests.unit.deliveries.test_deliver_use_case import subscription
from tests.unit.deliveries.test_select_digests import FakeSchedules

MONDAY_8_NY = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)  # 08:00 EDT


def _plan(tasks: FakeTasks) -> PlanDependencies:
    return PlanDependencies(
        store=None,
        tasks=tasks,
        subscriptions=FakeSubscriptions(subscription()),
        settings=load_email_settings(environ={}),
        project="p",
        location="l",
        clock=lambda: MONDAY_8_NY,
    )


def _select(
    schedules: FakeSchedules, tasks: FakeTasks, store: FakeSubscriptionStore | None = None
) -> tuple[SelectDependencies, FakeSubscriptionStore, FakePublisher]:
    store = store or FakeSubscriptionStore()
    publisher = FakePublisher()
    deps = SelectDependencies(
        settings=load_settings(environ={}, shard_count=2),
        store=store,
        publisher=publisher,
        clock=lambda: MONDAY_8_NY + timedelta(minutes=1),
        digests=DigestDependencies(schedules=schedules, plan=lambda: _plan(tasks)),
    )
    return deps, store, publisher


def _tick(deps: SelectDependencies, at: datetime, **payload: Any) -> Any:
    text = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return select_due({"time": text, **payload}, message("tick-1"), deps=deps)


def _collection(store: FakeSubscriptionStore) -> None:
    store.put(
        "news",
        subscription_doc("news", schedule={"every": 300}, start=MONDAY_8_NY, shard_count=2),
    )


def test_the_tick_plans_a_due_digest_once_per_recipient_without_a_ledger_claim() -> None:
    tasks = FakeTasks()
    schedules = FakeSchedules(DigestSchedule("acme", "digest", next_run_at=MONDAY_8_NY))
    deps, store, publisher = _select(schedules, tasks)
    _collection(store)
    result = _tick(deps, MONDAY_8_NY)
    assert [json.loads(m.data)["subscription_id"] for m in publisher.messages] == ["news"]
    assert result.digests.planned == [("acme", "digest", MONDAY_8_NY)]
    (request,) = tasks.created.values()
    body = json.loads(request.body)
    assert body["delivery_key"]["recipient"] == "pr@acme.example"
    assert body["period_start"] == "2026-03-08T12:00:00Z"  # no digest yet: the day before
    assert schedules.docs[("acme", "digest")].next_run_at == MONDAY_8_NY + timedelta(days=1)
    # The same tick again (a redelivery) and an overlapping one: nothing new is created.
    schedules.docs[("acme", "digest")] = replace(
        schedules.docs[("acme", "digest")], next_run_at=MONDAY_8_NY
    )
    again = _tick(deps, MONDAY_8_NY)
    assert again.digests.planned == [("acme", "digest", MONDAY_8_NY)]
    assert len(tasks.created) == 1 and tasks.calls == 2


def test_a_dry_run_tick_and_a_tick_for_another_shard_leave_digests_alone() -> None:
    tasks = FakeTasks()
    schedules = FakeSchedules(DigestSchedule("acme", "digest", next_run_at=MONDAY_8_NY))
    deps, _, _ = _select(schedules, tasks)
    assert _tick(deps, MONDAY_8_NY, dry_run=True).digests is None
    assert _tick(deps, MONDAY_8_NY, shard=1).digests is None
    assert tasks.calls == 0
    assert _tick(deps, MONDAY_8_NY, shard=0).digests.planned


def test_a_transient_digest_failure_fails_the_tick_after_collection_is_done(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = FakeTasks(TaskCreateError("t", "UNAVAILABLE"))
    schedules = FakeSchedules(DigestSchedule("acme", "digest", next_run_at=MONDAY_8_NY))
    deps, store, publisher = _select(schedules, tasks)
    _collection(store)
    with caplog.at_level(logging.ERROR), pytest.raises(DigestsFailedError) as raised:
        _tick(deps, MONDAY_8_NY)
    assert raised.value.retryable
    # Collection went out and was advanced before the digests ran.
    assert len(publisher.messages) == 1
    assert store.docs["news"]["next_run_at"] > MONDAY_8_NY
    # The digest stays due, so the redelivered tick plans it.
    assert schedules.docs[("acme", "digest")].next_run_at == MONDAY_8_NY
    (line,) = [r for r in caplog.records if getattr(r, "decision", "") == "digest-failed"]
    assert line.subscription_id == "acme" and line.retryable is True  # type: ignore[attr-defined]
    redelivered = _tick(deps, MONDAY_8_NY)
    assert redelivered.digests.planned and len(tasks.created) == 1
    assert len(publisher.messages) == 1  # collection: nothing due any more


def test_a_permanent_digest_failure_is_logged_and_the_tick_acknowledged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = FakeTasks(TaskRejectedError("t", "NOT_FOUND", "queue email-deliveries missing"))
    schedules = FakeSchedules(DigestSchedule("acme", "digest", next_run_at=MONDAY_8_NY))
    deps, _, _ = _select(schedules, tasks)
    with caplog.at_level(logging.ERROR):
        result = _tick(deps, MONDAY_8_NY)  # no exception: redelivering the tick cannot help
    assert [f[:2] for f in result.digests.failed] == [("acme", "digest")]
    assert any(getattr(r, "decision", "") == "digest-failed" for r in caplog.records)
    # Still due: the next tick tries again (and succeeds once the queue exists).
    assert schedules.docs[("acme", "digest")].next_run_at == MONDAY_8_NY
    assert _tick(deps, MONDAY_8_NY + timedelta(minutes=1)).digests.planned


class _BrokenSchedules(FakeSchedules):
    def due(self, now: datetime, limit: int) -> Sequence[DigestSchedule]:
        raise DependencyUnavailableError("firestore", "injected")


def test_a_failed_digest_query_does_not_stop_collection_but_fails_the_tick() -> None:
    deps, store, publisher = _select(_BrokenSchedules(), FakeTasks())
    _collection(store)
    with pytest.raises(DigestsFailedError, match="injected"):
        _tick(deps, MONDAY_8_NY)
    assert len(publisher.messages) == 1


def test_a_failed_collection_shard_does_not_stop_the_digests() -> None:
    tasks = FakeTasks()
    schedules = FakeSchedules(DigestSchedule("acme", "digest", next_run_at=MONDAY_8_NY))
    deps, store, publisher = _select(schedules, tasks)
    _collection(store)
    publisher.fail = True
    with pytest.raises(DependencyUnavailableError):
        _tick(deps, MONDAY_8_NY)
    assert len(tasks.created) == 1


# --- the admin's schedule sync -------------------------------------------------------------


class FakeAdmin:
    """delivery_schedules as the admin sees it, with versioned conditional writes."""

    def __init__(self) -> None:
        self.docs: dict[str, DigestSchedule] = {}
        self.writes = 0
        self.race: DigestSchedule | None = None

    def for_subscription(self, subscription_id: str) -> list[DigestSchedule]:
        found = [d for d in self.docs.values() if d.subscription_id == subscription_id]
        if self.race is not None:  # select advances one right after this read
            self.docs[self.race.id], self.race = self.race, None
        return found

    def create(self, schedule: DigestSchedule) -> None:
        if schedule.id in self.docs:
            raise AlreadyExists(schedule.id)
        self.writes += 1
        self.docs[schedule.id] = replace(schedule, version=1)

    def update(self, schedule: DigestSchedule, fields: Mapping[str, Any]) -> None:
        current = self.docs[schedule.id]
        if current.version != schedule.version:
            raise StoreConflict(schedule.id)
        self.writes += 1
        assert isinstance(current.version, int)
        known = {k: v for k, v in fields.items() if k != "retired_reason"}
        self.docs[schedule.id] = replace(current, **known, version=current.version + 1)


def _sub(**changes: Any) -> Subscription:
    stored = subscription(**changes)
    return Subscription.from_document(stored.id, stored.data)


def _digest(cron: str) -> list[dict[str, Any]]:
    return [
        {
            "id": "digest",
            "channel": "email",
            "to": ["pr@acme.example"],
            "schedule": {"cron": cron, "timezone": "America/New_York"},
            "format": "digest",
        }
    ]


def test_import_creates_a_schedule_per_cron_delivery_and_a_second_import_writes_nothing() -> None:
    admin = FakeAdmin()
    friday = utc("2026-03-06T20:00")
    changes = sync_delivery_schedules(admin, "acme", _sub(), now=friday)
    assert changes.created == [("digest", MONDAY_8_NY)]  # the alert (after: run) has none
    doc = admin.docs["acme.digest"]
    assert (doc.cron, doc.timezone) == ("0 8 * * 1-5", "America/New_York")
    assert not sync_delivery_schedules(admin, "acme", _sub(), now=friday).changed
    assert admin.writes == 1


def test_a_cron_edit_recomputes_next_run_at_and_keeps_the_period() -> None:
    admin = FakeAdmin()
    sync_delivery_schedules(admin, "acme", _sub(), now=utc("2026-03-06T20:00"))
    admin.docs["acme.digest"] = replace(
        admin.docs["acme.digest"], last_slot=utc("2026-03-06T13:00")
    )
    edited = _sub(deliveries=_digest("30 17 * * *"))
    changes = sync_delivery_schedules(admin, "acme", edited, now=utc("2026-03-06T20:00"))
    # Friday 17:30 in New York (EST) is 22:30Z: still ahead of 20:00Z, so it is the next slot.
    assert changes.updated == [("digest", utc("2026-03-06T22:30"))]
    assert admin.docs["acme.digest"].last_slot == utc("2026-03-06T13:00")


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        (None, "subscription deleted"),
        (_sub(deliveries=[]), "delivery removed or no longer on a cron schedule"),
        (_sub(status="expired"), "subscription expired"),
    ],
)
def test_a_removed_delivery_or_subscription_retires_the_schedule(
    after: Subscription | None, reason: str
) -> None:
    admin = FakeAdmin()
    sync_delivery_schedules(admin, "acme", _sub(), now=utc("2026-03-06T20:00"))
    changes = sync_delivery_schedules(admin, "acme", after, now=utc("2026-03-06T20:00"))
    assert changes.retired == [("digest", reason)]
    assert admin.docs["acme.digest"].next_run_at is None
    # Added back later: live again from its first slot after now.
    back = sync_delivery_schedules(admin, "acme", _sub(), now=utc("2026-03-09T13:00"))
    assert back.updated == [("digest", utc("2026-03-10T12:00"))]


def test_a_race_with_selects_advance_is_read_again_not_overwritten() -> None:
    admin = FakeAdmin()
    sync_delivery_schedules(admin, "acme", _sub(), now=utc("2026-03-06T20:00"))
    advanced = replace(admin.docs["acme.digest"], next_run_at=utc("2026-03-10T12:00"), version=7)
    admin.race = advanced
    edited = _sub(deliveries=_digest("0 9 * * 1-5"))
    changes = sync_delivery_schedules(admin, "acme", edited, now=utc("2026-03-09T12:30"))
    assert changes.updated == [("digest", utc("2026-03-09T13:00"))]
    assert admin.docs["acme.digest"].version == 8  # written over select's value, after reading it


def test_every_admin_write_path_keeps_the_schedule_in_step() -> None:
    from shared.ops.subscriptions import delete_subscription, set_paused, write_subscription

    store, admin = FakeSubscriptionStore(), FakeAdmin()
    friday = utc("2026-03-06T20:00")
    raw = {
        "name": "Acme",
        "schedule": {"every": 3600},
        "sources": [{"id": "feed", "kind": "rss"}],
        "deliveries": _digest("0 8 * * 1-5"),
    }
    common: dict[str, Any] = {"shard_count": 4, "known_kinds": ["rss"], "schedules": admin}
    write_subscription(store, "acme", raw, now=lambda: friday, **common)
    assert admin.docs["acme.digest"].next_run_at == MONDAY_8_NY
    # Unchanged re-import: nothing written (idempotent) -- unless the schedule went missing.
    writes = admin.writes
    write_subscription(store, "acme", raw, now=lambda: friday, replace=True, **common)
    assert admin.writes == writes
    del admin.docs["acme.digest"]
    write_subscription(store, "acme", raw, now=lambda: friday, replace=True, **common)
    assert admin.docs["acme.digest"].next_run_at == MONDAY_8_NY
    # A cron edit through import --replace recomputes.
    edited = {**raw, "deliveries": _digest("0 7 * * *")}
    write_subscription(store, "acme", edited, now=lambda: friday, replace=True, **common)
    assert admin.docs["acme.digest"].next_run_at == utc("2026-03-07T12:00")
    # Pause and resume leave a live schedule alone (select moves it on without sending).
    writes = admin.writes
    set_paused(store, "acme", True, now=lambda: friday, schedules=admin)
    set_paused(store, "acme", False, now=lambda: friday, schedules=admin)
    assert admin.writes == writes
    # Delete retires it; deleting again (nothing left) changes nothing more.
    assert delete_subscription(store, "acme", now=lambda: friday, schedules=admin)
    assert admin.docs["acme.digest"].next_run_at is None
    writes = admin.writes
    assert not delete_subscription(store, "acme", now=lambda: friday, schedules=admin)
    assert admin.writes == writes
