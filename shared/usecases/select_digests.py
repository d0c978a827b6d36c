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
   recipient, named from the delivery key; on select's tick without a ledger claim, see
   :func:`shared.wiring.digest_dependencies`) **before** the schedule is advanced: planning is
   idempotent, so a crash between the two, or five overlapping ticks planning the same slot,
   still gives one email per recipient;
4. the schedule is advanced to the first slot after ``now`` with a precondition on the document
   as read; losing that race to an overlapping tick is fine (the winner stored the same value).

A failure while planning one schedule (a :class:`~shared.errors.DispatcherError`) is logged
(``decision: digest-failed``) and leaves that schedule due; the others go on. What the tick does
about it is :mod:`shared.usecases.select_due`'s decision.

DST: slots come from :mod:`shared.scheduling.slots`, whose wall-clock rules make "08:00
America/New_York" one instant per day across both 2026 changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from shared.dal.records import DigestSchedule
from shared.errors import DispatcherError
from shared.instants import format_slot
from shared.scheduling.slots import ScheduleExhausted, iter_slots, next_slot_after
from shared.subscription import CronSchedule, Delivery, InvalidSubscription, Subscription
from shared.usecases.plan_deliveries import PlanDependencies, plan_delivery

logger = logging.getLogger(__name__)

#: A due digest slot older than this is not sent (see the module docstring, point 2).
DEFAULT_MAX_AGE = timedelta(hours=6)
#: When no digest was ever sent, the first one reports this far back.
FIRST_PERIOD = timedelta(hours=24)


class DigestScheduleStore(Protocol):
    def due(self, now: datetime, limit: int) -> Sequence[DigestSchedule]:
        """Schedules with ``next_run_at <= now`` (indexed; never the whole collection)."""
        ...

    def advance(
        self, schedule: DigestSchedule, next_run_at: datetime | None, last_slot: datetime | None
    ) -> bool:
        """Store the new values if the document is unchanged since read; False if it changed."""
        ...


@dataclass(frozen=True)
class DigestDependencies:
    """What the tick's digest path needs (real ones from :func:`shared.wiring`).

    ``plan`` is called only when a schedule is due, so a tick with nothing due touches neither
    the ledger nor Cloud Tasks (the email ledger's pool opens on first use anyway).
    """

    schedules: DigestScheduleStore
    plan: Callable[[], PlanDependencies]
    max_age: timedelta = DEFAULT_MAX_AGE
    limit: int = 500


@dataclass
class DigestTickResult:
    planned: list[tuple[str, str, datetime]] = field(default_factory=list)
    dropped: list[tuple[str, str, datetime, str]] = field(default_factory=list)
    retired: list[tuple[str, str, str]] = field(default_factory=list)
    lost_races: int = 0
    # Schedules whose planning failed (left due: the next tick, or the redelivered one, plans
    # them again). The error says whether a retry can help (``retryable``).
    failed: list[tuple[str, str, DispatcherError]] = field(default_factory=list)

    @property
    def retryable_failures(self) -> list[DispatcherError]:
        """The failures a redelivery of the tick could cure."""
        return [error for *_, error in self.failed if error.retryable]


def select_due_digests(
    now: datetime,
    store: DigestScheduleStore,
    plan: PlanDependencies,
    *,
    max_age: timedelta = DEFAULT_MAX_AGE,
    limit: int = 500,
) -> DigestTickResult:
    """Plan every due digest slot once; see the module docstring."""
    return _plan_schedules(store.due(now, limit), now, store, plan, max_age)


def run_digests(now: datetime, deps: DigestDependencies) -> DigestTickResult:
    """The tick's digest path: :func:`select_due_digests`, the planner's dependencies built
    only when a schedule is due (a quiet tick costs one indexed query)."""
    due = deps.schedules.due(now, deps.limit)
    if not due:
        return DigestTickResult()
    return _plan_schedules(due, now, deps.schedules, deps.plan(), deps.max_age)


def _plan_schedules(
    due: Sequence[DigestSchedule],
    now: datetime,
    store: DigestScheduleStore,
    plan: PlanDependencies,
    max_age: timedelta,
) -> DigestTickResult:
    result = DigestTickResult()
    for schedule in due:
        try:
            _one_schedule(schedule, now, store=store, plan=plan, max_age=max_age, result=result)
        except DispatcherError as exc:
            # One digest's failure must not hold up the others: it stays due (not advanced),
            # so the next tick plans it again; planning is idempotent (claimed rows, named
            # tasks). The caller decides whether the tick itself is retried.
            result.failed.append((schedule.subscription_id, schedule.delivery_id, exc))
            logger.error(
                "digest %s/%s not planned: %s",
                schedule.subscription_id,
                schedule.delivery_id,
                exc.message,
                extra={
                    "subscription_id": schedule.subscription_id,
                    "delivery_id": schedule.delivery_id,
                    "decision": "digest-failed",
                    "reason_class": exc.reason_class,
                    "retryable": exc.retryable,
                    **exc.details(),
                },
            )
    return result


def _one_schedule(
    schedule: DigestSchedule,
    now: datetime,
    *,
    store: DigestScheduleStore,
    plan: PlanDependencies,
    max_age: timedelta,
    result: DigestTickResult,
) -> None:
    if schedule.next_run_at is None:  # retired: the due query never returns it
        return
    reason, subscription, delivery = _still_wanted(schedule, plan)
    if reason is not None or subscription is None or delivery is None:
        store.advance(schedule, None, schedule.last_slot)
        result.retired.append((schedule.subscription_id, schedule.delivery_id, str(reason)))
        logger.info(
            "digest %s/%s retired: %s",
            schedule.subscription_id,
            schedule.delivery_id,
            reason,
            extra={
                "subscription_id": schedule.subscription_id,
                "delivery_id": schedule.delivery_id,
                "decision": "digest-retired",
            },
        )
        return
    assert isinstance(delivery.schedule, CronSchedule)
    due = [schedule.next_run_at, *iter_slots(delivery.schedule, schedule.next_run_at, now)]
    newest = due[-1]
    key = (schedule.subscription_id, schedule.delivery_id)
    for older in due[:-1]:
        result.dropped.append((*key, older, "superseded by a newer slot"))
    last_slot = schedule.last_slot
    decision = "digest-planned"
    if subscription.paused:
        result.dropped.append((*key, newest, "paused"))
        last_slot = newest
        decision = "digest-paused"
    elif now - newest > max_age:
        # Not sent, and not counted as sent: the next digest's period still starts at the
        # last one that went out.
        result.dropped.append((*key, newest, "older than max_age"))
        decision = "digest-stale"
    else:
        period_start = last_slot if last_slot is not None else newest - FIRST_PERIOD
        planned = plan_delivery(subscription, delivery, newest, plan, period_start=period_start)
        result.planned.append((*key, newest))
        last_slot = newest
        logger.info(
            "digest %s/%s slot %s: %d email tasks created, %d already planned",
            *key,
            format_slot(newest),
            len(planned.created),
            len(planned.existing),
            extra={
                "subscription_id": key[0],
                "delivery_id": key[1],
                "slot": format_slot(newest),
                "decision": decision,
                "tasks": len(planned.created),
            },
        )
    if decision != "digest-planned":
        logger.info(
            "digest %s/%s slot %s not sent (%s)",
            *key,
            format_slot(newest),
            result.dropped[-1][3],
            extra={
                "subscription_id": key[0],
                "delivery_id": key[1],
                "slot": format_slot(newest),
                "decision": decision,
            },
        )
    try:
        following: datetime | None = next_slot_after(delivery.schedule, now)
    except ScheduleExhausted:
        following = None
    if not store.advance(schedule, following, last_slot):
        result.lost_races += 1


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
