"""Scheduled digests on the tick: once per slot, DST-correct, overlapping ticks absorbed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from shared.dal.records import DigestSchedule, StoredSubscription
from shared.email_settings import load_email_settings
from shared.usecases.plan_deliveries import PlanDependencies
from shared.usecases.select_digests import select_due_digests
from tests.unit.deliveries.fakes import NOW, FakeEmailStore, FakeSubscriptions, FakeTasks
from tests.unit.deliveries.test_deliver_use_case import subscription

NEW_YORK = ZoneInfo("America/New_York")


class FakeSchedules:
    """delivery_schedules with Firestore's semantics: an indexed due query, and writes
    preconditioned on the version read. ``stale`` replays the first read of a tick to every
    caller of that tick: overlapping ticks that all read before any of them advanced."""

    def __init__(self, *schedules: DigestSchedule, stale: bool = False) -> None:
        self.docs = {(s.subscription_id, s.delivery_id): replace(s, version=0) for s in schedules}
        self.stale = stale
        self._snapshot: tuple[datetime, list[DigestSchedule]] | None = None

    def due(self, now: datetime, limit: int) -> Sequence[DigestSchedule]:
        if self.stale and self._snapshot is not None and self._snapshot[0] == now:
            return self._snapshot[1]
        found = [
            s for s in self.docs.values() if s.next_run_at is not None and s.next_run_at <= now
        ][:limit]
        self._snapshot = (now, found)
        return found

    def advance(
        self, schedule: DigestSchedule, next_run_at: datetime | None, last_slot: datetime | None
    ) -> bool:
        key = (schedule.subscription_id, schedule.delivery_id)
        current = self.docs.get(key)
        if current is None or current.version != schedule.version:
            return False
        if next_run_at is None:
            del self.docs[key]  # retired: never due again
            return True
        assert isinstance(current.version, int)
        self.docs[key] = replace(
            current, next_run_at=next_run_at, last_slot=last_slot, version=current.version + 1
        )
        return True


def _plan(
    doc: StoredSubscription | None = None,
) -> tuple[PlanDependencies, FakeEmailStore, FakeTasks]:
    store, tasks = FakeEmailStore(), FakeTasks()
    deps = PlanDependencies(
        store=store,
        tasks=tasks,
        subscriptions=FakeSubscriptions(*([doc] if doc else [subscription()])),
        settings=load_email_settings(environ={}),
        project="p",
        location="l",
        clock=lambda: NOW,
    )
    return deps, store, tasks


def _weekday_eight_am(first: date, last: date) -> list[datetime]:
    """The oracle: 08:00 wall clock in New York on each weekday, through zoneinfo alone."""
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return [
        datetime(d.year, d.month, d.day, 8, 0, tzinfo=NEW_YORK).astimezone(UTC)
        for d in days
        if d.weekday() < 5
    ]


@pytest.mark.parametrize(
    ("start", "end"),
    [
        # Spring forward: Sunday 2026-03-08 02:00 EST -> 03:00 EDT.
        (datetime(2026, 3, 5, 14, 0, tzinfo=UTC), datetime(2026, 3, 11, 0, 0, tzinfo=UTC)),
        # Fall back: Sunday 2026-11-01 02:00 EDT -> 01:00 EST.
        (datetime(2026, 10, 29, 14, 0, tzinfo=UTC), datetime(2026, 11, 4, 0, 0, tzinfo=UTC)),
    ],
)
def test_weekday_eight_am_new_york_is_sent_once_a_day_across_dst(
    start: datetime, end: datetime
) -> None:
    deps, store, tasks = _plan()
    first = _weekday_eight_am(start.date(), end.date())
    schedules = FakeSchedules(
        DigestSchedule("acme", "digest", next_run_at=next(s for s in first if s > start)),
        stale=True,
    )
    now = start
    races = 0
    while now <= end:
        for _ in range(5):  # five overlapping ticks per minute, all reading before any advance
            races += select_due_digests(now, schedules, deps).lost_races
        now += timedelta(minutes=1)
    expected = [s for s in first if start < s <= end]
    sent = sorted(row.slot for row in store.rows.values())
    assert sent == expected
    assert len(tasks.created) == len(expected)  # one task per (slot, recipient)
    assert races == 4 * len(expected)
    # The spring Monday is 12:00Z (EDT), the Friday before it 13:00Z (EST); autumn the reverse.
    assert len({s.hour for s in sent}) == 2
    # Each digest's period starts where the previous one ended (the weekend included).
    periods = [json.loads(t.body).get("period_start") for t in tasks.created.values()]
    assert periods[1:] == [s.strftime("%Y-%m-%dT%H:%M:%SZ") for s in sorted(sent)[:-1]]


def test_an_outage_sends_only_the_newest_recent_slot_and_keeps_the_period() -> None:
    deps, store, _ = _plan()
    monday = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    schedules = FakeSchedules(
        DigestSchedule(
            "acme",
            "digest",
            next_run_at=datetime(2026, 3, 5, 13, 0, tzinfo=UTC),  # Thursday
            last_slot=datetime(2026, 3, 4, 13, 0, tzinfo=UTC),  # Wednesday's went out
        )
    )
    result = select_due_digests(monday + timedelta(minutes=3), schedules, deps)
    assert [p[2] for p in result.planned] == [monday]
    assert [d[3] for d in result.dropped] == ["superseded by a newer slot"] * 2  # Thu, Fri
    (row,) = store.rows.values()
    assert row.slot == monday
    doc = schedules.docs[("acme", "digest")]
    assert doc.next_run_at == datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert doc.last_slot == monday


def test_a_stale_slot_is_not_sent_and_not_counted_as_sent() -> None:
    deps, store, _ = _plan()
    wednesday = datetime(2026, 3, 4, 13, 0, tzinfo=UTC)
    schedules = FakeSchedules(
        DigestSchedule(
            "acme",
            "digest",
            next_run_at=datetime(2026, 3, 5, 13, 0, tzinfo=UTC),
            last_slot=wednesday,
        )
    )
    result = select_due_digests(datetime(2026, 3, 5, 20, 0, tzinfo=UTC), schedules, deps)
    assert result.planned == [] and result.dropped[0][3] == "older than max_age"
    assert store.rows == {}
    assert schedules.docs[("acme", "digest")].last_slot == wednesday


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (None, "subscription deleted"),
        (subscription(deliveries=[]), "delivery removed"),
        (subscription(status="expired"), "subscription expired"),
    ],
)
def test_unwanted_schedules_are_retired(doc: StoredSubscription | None, reason: str) -> None:
    deps, store, _ = _plan(doc)
    if doc is None:
        deps = replace(deps, subscriptions=FakeSubscriptions())
    schedules = FakeSchedules(
        DigestSchedule("acme", "digest", next_run_at=datetime(2026, 3, 9, 12, 0, tzinfo=UTC))
    )
    result = select_due_digests(datetime(2026, 3, 9, 12, 1, tzinfo=UTC), schedules, deps)
    assert result.retired == [("acme", "digest", reason)]
    assert schedules.docs == {} and store.rows == {}


def test_paused_moves_on_without_sending() -> None:
    deps, store, _ = _plan(subscription(paused=True))
    monday = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    schedules = FakeSchedules(DigestSchedule("acme", "digest", next_run_at=monday))
    result = select_due_digests(monday + timedelta(minutes=1), schedules, deps)
    assert result.dropped == [("acme", "digest", monday, "paused")]
    assert store.rows == {}
    assert schedules.docs[("acme", "digest")].next_run_at == monday + timedelta(days=1)
