"""Scheduled digests on the tick: which digest slots are due, planned once each.

Kept apart from ``select_due`` on purpose: a digest has its own schedule and its own
``next_run_at``, stored in a collection of its own (``delivery_schedules``, one document per
(subscription, cron delivery), id ``<subscription>.<delivery>``), so select's due query over
``subscriptions`` is untouched and the digest query is as cheap (indexed ``next_run_at <= now``).

For each due schedule, in this order:

1. the subscription is re-read; a deleted subscription, a removed delivery, a delivery no longer
   on a cron schedule, an expired subscription: the schedule is retired (``next_run_at = None``),
   nothing is sent. A paused subscription sends no digest but its schedule moves on, so resuming
   does not send a backlog;
2. the due slots are ``N <= s <= now`` (``N`` the stored ``next_run_at``). Only the **newest** is
   sent: a digest summarises a period, and a week of missed 08:00 digests after an outage would
   be noise -- the newest one's period starts at the last slot that was sent (``last_slot``), so
   nothing collected is left out of every email. Slots older than ``max_age`` are not sent at all
   (an outage of days sends nothing stale; the next slot reports the whole period);
3. the slot is planned (:func:`shared.usecases.plan_deliveries.plan_delivery`: one task per
   recipient, claimed in the ledger first) **before** the schedule is advanced: planning is
   idempotent, so a crash between the two, or five overlapping ticks planning the same slot,
   still gives one email per recipient;
4. the schedule is advanced to the first slot after ``now`` with a precondition on the document
   as read; losing that race to an overlapping tick is fine (the winner stored the same value).

DST: slots come from :mod:`shared.scheduling.slots`, whose wall-clock rules make "08:00
America/New_York" one instant per day across both 2026 changes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from shared.scheduling.slots import ScheduleExhausted, iter_slots, next_slot_after
from shared.subscription import CronSchedule, Delivery, InvalidSubscription, Subscription
from shared.usecases.plan_deliveries import PlanDependencies, plan_delivery

logger = logging.getLogger(__name__)

#: A due digest slot older than this is not sent (see the module docstring, point 2).
DEFAULT_MAX_AGE = timedelta(hours=6)
#: When no digest was ever sent, the first one reports this far back.
FIRST_PERIOD = timedelta(hours=24)


@dataclass(frozen=True)
class DigestSchedule:
    """One ``delivery_schedules`` document as read."""

    subscription_id: str
    delivery_id: str
    next_run_at: datetime
    # The slot of the last digest planned: the start of the next one's period.
    last_slot: datetime | None = None
    # Opaque precondition token of the read (the Firestore update time).
    version: object = None


class DigestScheduleStore(Protocol):
    def due(self, now: datetime, limit: int) -> Sequence[DigestSchedule]:
        """Schedules with ``next_run_at <= now`` (indexed; never the whole collection)."""
        ...

    def advance(
        self, schedule: DigestSchedule, next_run_at: datetime | None, last_slot: datetime | None
    ) -> bool:
        """Store the new values if the document is unchanged since read; False if it changed."""
        ...


@dataclass
class DigestTickResult:
    planned: list[tuple[str, str, datetime]] = field(default_factory=list)
    dropped: list[tuple[str, str, datetime, str]] = field(default_factory=list)
    retired: list[tuple[str, str, str]] = field(default_factory=list)
    lost_races: int = 0


def select_due_digests(
    now: datetime,
    store: DigestScheduleStore,
    plan: PlanDependencies,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
    limit: int = 500,
) -> DigestTickResult:
    """Plan every due digest slot once; see the module docstring."""
    result = DigestTickResult()
    for schedule in store.due(now, limit):
        reason, subscription, delivery = _still_wanted(schedule, plan)
        if reason is not None or subscription is None or delivery is None:
            store.advance(schedule, None, schedule.last_slot)
            result.retired.append((schedule.subscription_id, schedule.delivery_id, str(reason)))
            continue
        assert isinstance(delivery.schedule, CronSchedule)
        due = [schedule.next_run_at, *iter_slots(delivery.schedule, schedule.next_run_at, now)]
        newest = due[-1]
        key = (schedule.subscription_id, schedule.delivery_id)
        for older in due[:-1]:
            result.dropped.append((*key, older, "superseded by a newer slot"))
        last_slot = schedule.last_slot
        if subscription.paused:
            result.dropped.append((*key, newest, "paused"))
            last_slot = newest
        elif now - newest > max_age:
            # Not sent, and not counted as sent: the next digest's period still starts at the
            # last one that went out.
            result.dropped.append((*key, newest, "older than max_age"))
        else:
            period_start = last_slot if last_slot is not None else newest - FIRST_PERIOD
            plan_delivery(subscription, delivery, newest, plan, period_start=period_start)
            result.planned.append((*key, newest))
            last_slot = newest
        try:
            following: datetime | None = next_slot_after(delivery.schedule, now)
        except ScheduleExhausted:
            following = None
        if not store.advance(schedule, following, last_slot):
            result.lost_races += 1
    return result


def _still_wanted(
    schedule: DigestSchedule, plan: PlanDependencies
) -> tuple[str | None, Subscription | None, Delivery | None]:
    stored = plan.subscriptions.get(schedule.subscription_id)
    if stored is None:
        return "subscription deleted", None, None
    try:
        subscription = Subscription.from_document(stored.id, stored.data)
    except InvalidSubscription as exc:
        return f"subscription malformed: {exc}", None, None
    if subscription.status == "expired":
        return "subscription expired", None, None
    delivery = subscription.delivery(schedule.delivery_id)
    if delivery is None:
        return "delivery removed", None, None
    if not isinstance(delivery.schedule, CronSchedule):
        return "delivery no longer on a cron schedule", None, None
    return None, subscription, delivery
