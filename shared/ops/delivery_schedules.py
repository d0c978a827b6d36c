"""Keep ``delivery_schedules`` in step with a subscription's cron deliveries.

Called by the subscription admin after every write of a subscription document (``add``,
``import``, ``import --replace``, ``pause``, ``resume``, ``delete``): one schedule document per
cron delivery (id ``<subscription>.<delivery>``), which select's digest path reads
(:mod:`shared.usecases.select_digests`). Rules, all idempotent (a second call writes nothing):

* a cron delivery without a live schedule (new, or added back after it was removed): its
  ``next_run_at`` is the delivery's first slot at or after now -- a new digest does not send
  a backlog; ``last_slot`` is kept, so a delivery added back continues its period;
* a cron or time zone edited: ``next_run_at`` recomputed the same way (the old slots belong
  to the old schedule);
* a delivery removed, turned into ``after: run``, the subscription deleted or expired: the
  schedule is retired (``next_run_at = null``, ``retired_reason``), never deleted;
* pause and resume change nothing here: select keeps moving a paused subscription's schedule
  on without sending (so a resume sends no backlog); they still call this, which repairs a
  schedule an interrupted import left missing.

Every write is conditional (create-if-absent, or update on the update time as read); a lost
race with select's advance or another admin re-reads and tries again. Should the admin die
between the subscription write and this, select stays safe: it re-reads the subscription for
every due schedule and retires what is no longer wanted; running the same command again
creates what is missing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from shared.dal.records import AlreadyExists, DigestSchedule, StoreConflict
from shared.scheduling.slots import ScheduleExhausted, next_slot_after
from shared.subscription import CronSchedule, Subscription

__all__ = ["ScheduleAdmin", "ScheduleChanges", "first_digest_slot", "sync_delivery_schedules"]

_EPSILON = timedelta(microseconds=1)
_CONFLICT_RETRIES = 5


class ScheduleAdmin(Protocol):
    """What the admin needs of ``delivery_schedules``."""

    def for_subscription(self, subscription_id: str) -> list[DigestSchedule]:
        """Every schedule document of the subscription, retired ones included."""
        ...

    def create(self, schedule: DigestSchedule) -> None:
        """Create; :class:`~shared.dal.records.AlreadyExists` if it is there."""
        ...

    def update(self, schedule: DigestSchedule, fields: Mapping[str, Any]) -> None:
        """Set fields if unchanged since read; :class:`~shared.dal.records.StoreConflict`."""
        ...


@dataclass
class ScheduleChanges:
    """What one sync wrote, as (delivery id, next_run_at or retired reason)."""

    created: list[tuple[str, datetime | None]] = field(default_factory=list)
    updated: list[tuple[str, datetime | None]] = field(default_factory=list)
    retired: list[tuple[str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.retired)


def first_digest_slot(schedule: CronSchedule, now: datetime) -> datetime | None:
    """The delivery's first slot at or after ``now`` (``None``: the cron has no further slot)."""
    try:
        return next_slot_after(schedule, now - _EPSILON)
    except ScheduleExhausted:
        return None


def sync_delivery_schedules(
    schedules: ScheduleAdmin,
    subscription_id: str,
    subscription: Subscription | None,
    *,
    now: datetime,
    recompute: bool = False,
) -> ScheduleChanges:
    """Make the subscription's schedule documents match ``subscription`` (``None``: deleted).

    ``recompute`` (maintenance ``recompute-next-run``) also puts every live schedule back on its
    cron: ``next_run_at`` becomes the first slot at or after min(stored, now), as for collection
    schedules. A slot already due stays due; one a wrong tick pushed ahead comes back to now.
    """
    for _ in range(_CONFLICT_RETRIES):
        try:
            return _sync_once(schedules, subscription_id, subscription, now, recompute=recompute)
        except (AlreadyExists, StoreConflict):
            # select advanced a schedule, or another admin wrote one, since we read: read again.
            time.sleep(0.05)
    raise StoreConflict(f"delivery schedules of {subscription_id!r} keep changing; try again")


def _wanted(subscription: Subscription | None) -> dict[str, CronSchedule]:
    if subscription is None or subscription.status == "expired":
        return {}
    return {
        d.id: d.schedule for d in subscription.deliveries if isinstance(d.schedule, CronSchedule)
    }


def _retire_reason(subscription: Subscription | None) -> str:
    if subscription is None:
        return "subscription deleted"
    if subscription.status == "expired":
        return "subscription expired"
    return "delivery removed or no longer on a cron schedule"


def _sync_once(
    schedules: ScheduleAdmin,
    subscription_id: str,
    subscription: Subscription | None,
    now: datetime,
    *,
    recompute: bool,
) -> ScheduleChanges:
    changes = ScheduleChanges()
    wanted = _wanted(subscription)
    existing = {s.delivery_id: s for s in schedules.for_subscription(subscription_id)}
    for delivery_id, cron in sorted(wanted.items()):
        current = existing.get(delivery_id)
        if current is None:
            first = first_digest_slot(cron, now)
            schedules.create(
                DigestSchedule(
                    subscription_id,
                    delivery_id,
                    next_run_at=first,
                    cron=cron.cron,
                    timezone=cron.timezone,
                )
            )
            changes.created.append((delivery_id, first))
            continue
        edited = (current.cron, current.timezone) != (cron.cron, cron.timezone)
        if edited or current.next_run_at is None:
            first = first_digest_slot(cron, now)
            schedules.update(
                current,
                {
                    "cron": cron.cron,
                    "timezone": cron.timezone,
                    "next_run_at": first,
                    "retired_reason": None,
                },
            )
            changes.updated.append((delivery_id, first))
        elif recompute:
            assert current.next_run_at is not None  # the branch above took the retired ones
            expected = first_digest_slot(cron, min(current.next_run_at, now))
            if expected != current.next_run_at:
                schedules.update(current, {"next_run_at": expected})
                changes.updated.append((delivery_id, expected))
    reason = _retire_reason(subscription)
    for delivery_id, current in sorted(existing.items()):
        if delivery_id not in wanted and current.next_run_at is not None:
            schedules.update(current, {"next_run_at": None, "retired_reason": reason})
            changes.retired.append((delivery_id, reason))
    return changes
