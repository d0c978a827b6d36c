"""Scheduled digests on real parts: the ``delivery_schedules`` adapter on the Firestore emulator,
and select's digest path driven tick by tick across both 2026 DST changes, its email tasks on the
Cloud Tasks emulator delivered by the stack's deliver function into PostgreSQL and the SMTP sink.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
import requests

from shared.clients import build_tasks_client
from shared.config import load_settings
from shared.dal.cloud_tasks import CloudTasksGateway
from shared.dal.digest_schedules import FirestoreDigestSchedules
from shared.dal.firestore_store import FirestoreSubscriptionStore
from shared.dal.records import DigestSchedule
from shared.email_settings import load_email_settings
from shared.envelope import PushMessage
from shared.ops.delivery_schedules import sync_delivery_schedules
from shared.ops.subscriptions import build_document
from shared.subscription import CronSchedule, Subscription
from shared.usecases.plan_deliveries import PlanDependencies
from shared.usecases.select_digests import DigestDependencies
from shared.usecases.select_due import SelectDependencies, SelectResult, select_due
from tests.support.core import emulator_environment
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

pytestmark = pytest.mark.integration

NEW_YORK = ZoneInfo("America/New_York")
RECIPIENTS = ["pr@acme.example", "press@acme.example"]


class NoPublisher:
    """The collection half of the tick has nothing due here (no subscription is due in 2026-03);
    a publish would be a bug of this test's setup."""

    def publish(self, messages: Any) -> list[str]:
        assert list(messages) == [], messages
        return []


@pytest.fixture
def parts(stack: StackHandle) -> Iterator[dict[str, Any]]:
    stack.wipe_firestore()
    stack.wipe_ledger()
    sink = stack.env["SMTP_SINK_URL"]
    requests.delete(f"{sink}/messages", timeout=5).raise_for_status()
    requests.post(f"{sink}/control", json={"refuse_code": 0}, timeout=5).raise_for_status()
    settings = load_settings(environ=stack.env)
    with emulator_environment(stack.env):
        from google.cloud import firestore

        client = firestore.Client(project=stack.project)
    host = stack.env["CLOUD_TASKS_EMULATOR_HOST"]
    yield {
        "settings": settings,
        "firestore": client,
        "schedules": FirestoreDigestSchedules(lambda: client),
        "subscriptions": FirestoreSubscriptionStore(lambda: client),
        "tasks": CloudTasksGateway(lambda: build_tasks_client(host)),
        "email": load_email_settings(environ=stack.env),
        "sink": sink,
    }
    client.close()  # type: ignore[no-untyped-call]


def _subscription(parts: dict[str, Any], sub_id: str) -> Subscription:
    subscription, document = build_document(
        sub_id,
        {
            "name": f"Acme {sub_id}",
            # Collection is hourly from now (December 2026): never due at the March ticks.
            "schedule": {"every": 3600},
            "sources": [{"id": "feed", "kind": "rss"}],
            "deliveries": [
                {
                    "id": "morning",
                    "channel": "email",
                    "to": RECIPIENTS,
                    "schedule": {"cron": "0 8 * * 1-5", "timezone": "America/New_York"},
                    "format": "digest",
                }
            ],
        },
        now=datetime.now(UTC),
        shard_count=parts["settings"].shard_count,
    )
    parts["firestore"].collection("subscriptions").document(sub_id).set(document)
    return subscription


def _select_deps(parts: dict[str, Any]) -> SelectDependencies:
    plan = PlanDependencies(
        store=None,
        tasks=parts["tasks"],
        subscriptions=parts["subscriptions"],
        settings=parts["email"],
        project=parts["settings"].project,
        location=parts["settings"].tasks_location,
    )
    return SelectDependencies(
        settings=parts["settings"],
        store=parts["subscriptions"],
        publisher=NoPublisher(),
        digests=DigestDependencies(schedules=parts["schedules"], plan=lambda: plan),
    )


def _tick(deps: SelectDependencies, at: datetime) -> SelectResult:
    # shard 0: the digests ride it, and collection queries one shard instead of sixteen.
    payload = {"time": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "shard": 0}
    return select_due(
        payload, PushMessage(data=b"{}", attributes={}, message_id=f"t{at:%j%H%M}"), deps=deps
    )


def _weekday_eight_am(first: date, last: date) -> list[datetime]:
    """The oracle, from zoneinfo alone: 08:00 New York wall clock on each weekday."""
    days = (first + timedelta(days=n) for n in range((last - first).days + 1))
    return [
        datetime(d.year, d.month, d.day, 8, 0, tzinfo=NEW_YORK).astimezone(UTC)
        for d in days
        if d.weekday() < 5
    ]


def _sent_rows(stack: StackHandle, sub_id: str) -> list[tuple[datetime, str, str, str]]:
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        return conn.execute(
            "SELECT slot, recipient, state, message_id FROM email_deliveries "
            "WHERE subscription_id = %s ORDER BY slot, recipient",
            (sub_id,),
        ).fetchall()


# --- the adapter ---------------------------------------------------------------------------------


def test_advance_with_a_stale_read_loses_the_race_on_the_emulator(parts: dict[str, Any]) -> None:
    schedules: FirestoreDigestSchedules = parts["schedules"]
    first = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)
    schedules.create(
        DigestSchedule("acme", "morning", next_run_at=first, cron="0 8 * * 1-5", timezone="UTC")
    )
    (mine,) = schedules.due(first, 10)
    (theirs,) = schedules.due(first, 10)
    assert mine.version is not None and mine.version == theirs.version
    assert schedules.advance(theirs, first + timedelta(days=1), first) is True
    # The document changed since `mine` was read: Firestore refuses the precondition.
    assert schedules.advance(mine, first + timedelta(days=7), first) is False
    stored = schedules.get("acme", "morning")
    assert stored is not None and stored.next_run_at == first + timedelta(days=1)
    assert stored.last_slot == first
    # Not due before its time; retired (null) never due again; retiring keeps last_slot.
    assert schedules.due(first + timedelta(hours=23), 10) == []
    assert schedules.advance(stored, None, stored.last_slot) is True
    assert schedules.due(datetime(2030, 1, 1, tzinfo=UTC), 10) == []
    retired = schedules.get("acme", "morning")
    assert retired is not None and retired.next_run_at is None and retired.last_slot == first
    # A deleted document is a lost race too, not an error.
    parts["firestore"].collection("delivery_schedules").document("acme.morning").delete()
    assert schedules.advance(retired, first, None) is False


def test_the_admin_sync_on_the_emulator_creates_recomputes_and_retires(
    parts: dict[str, Any],
) -> None:
    schedules: FirestoreDigestSchedules = parts["schedules"]
    subscription = _subscription(parts, "acme-sync")
    friday_evening = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)
    changes = sync_delivery_schedules(schedules, "acme-sync", subscription, now=friday_evening)
    assert changes.created == [("morning", datetime(2026, 3, 9, 12, 0, tzinfo=UTC))]
    assert not sync_delivery_schedules(
        schedules, "acme-sync", subscription, now=friday_evening
    ).changed
    (delivery,) = subscription.deliveries
    edited = replace(
        subscription,
        deliveries=(replace(delivery, schedule=CronSchedule("0 9 * * *", "America/New_York")),),
    )
    changes = sync_delivery_schedules(schedules, "acme-sync", edited, now=friday_evening)
    assert changes.updated == [("morning", datetime(2026, 3, 7, 14, 0, tzinfo=UTC))]
    # Maintenance recompute-next-run: a schedule a wrong tick moved a year ahead comes back.
    moved = schedules.get("acme-sync", "morning")
    assert moved is not None
    assert schedules.advance(moved, datetime(2027, 3, 7, 14, 0, tzinfo=UTC), None)
    changes = sync_delivery_schedules(
        schedules, "acme-sync", edited, now=friday_evening, recompute=True
    )
    assert changes.updated == [("morning", datetime(2026, 3, 7, 14, 0, tzinfo=UTC))]
    assert not sync_delivery_schedules(
        schedules, "acme-sync", edited, now=friday_evening, recompute=True
    ).changed
    changes = sync_delivery_schedules(schedules, "acme-sync", None, now=friday_evening)
    assert changes.retired == [("morning", "subscription deleted")]
    stored = schedules.get("acme-sync", "morning")
    assert stored is not None and stored.next_run_at is None and stored.cron == "0 9 * * *"


# --- select's digest path across the 2026 DST changes ---------------------------------------


@pytest.mark.parametrize(
    ("first", "last"),
    [
        # Spring forward: Sunday 2026-03-08 02:00 EST -> 03:00 EDT.
        (date(2026, 3, 5), date(2026, 3, 11)),
        # Fall back: Sunday 2026-11-01 02:00 EDT -> 01:00 EST.
        (date(2026, 10, 29), date(2026, 11, 4)),
    ],
)
def test_weekday_eight_am_new_york_sends_once_a_day_across_the_dst_change(
    stack: StackHandle, parts: dict[str, Any], first: date, last: date
) -> None:
    sub_id = f"dst-{first:%m%d}"
    subscription = _subscription(parts, sub_id)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    sync_delivery_schedules(parts["schedules"], sub_id, subscription, now=start)
    deps = _select_deps(parts)
    expected = _weekday_eight_am(first, last)
    planned: list[datetime] = []
    day = first
    while day <= last:
        # Only the minutes that matter: 08:00 New York is 12:00Z (EDT) or 13:00Z (EST), each
        # ticked with its neighbours; five overlapping ticks on the candidate minutes.
        for hour in (12, 13):
            minute = datetime(day.year, day.month, day.day, hour, 0, tzinfo=UTC)
            _tick(deps, minute - timedelta(minutes=1))
            with ThreadPoolExecutor(5) as pool:
                results = list(pool.map(lambda at: _tick(deps, at), [minute] * 5))
            planned += [slot for r in results if r.digests for (*_, slot) in r.digests.planned]
            _tick(deps, minute + timedelta(minutes=1))
        day += timedelta(days=1)
    # Planned at least once per weekday slot (overlapping ticks may each plan it: idempotent),
    # never at any other instant: the weekend and the wrong side of the offset change stay quiet.
    assert sorted(set(planned)) == expected
    # One email per (slot, recipient) sent, whatever the overlapping ticks created.
    rows = wait_for(
        lambda: (
            found
            if len(found := _sent_rows(stack, sub_id)) == len(expected) * len(RECIPIENTS)
            and all(state == "sent" for _, _, state, _ in found)
            else None
        ),
        timeout=90,
        interval=0.5,
        message="every digest sent",
    )
    assert sorted({slot for slot, *_ in rows}) == expected
    assert len({message_id for *_, message_id in rows}) == len(rows)
    # The spring Monday is 12:00Z (EDT), the Friday before it 13:00Z (EST); autumn the reverse.
    assert {slot.hour for slot in expected} == {12, 13}
    messages = [
        m
        for m in requests.get(f"{parts['sink']}/messages", timeout=5).json()
        if sub_id in m["subject"]
    ]
    assert len(messages) == len(expected) * len(RECIPIENTS)
    schedule = parts["schedules"].get(sub_id, "morning")
    assert schedule is not None and schedule.last_slot == expected[-1]
