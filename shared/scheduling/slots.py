"""Slots: the minute-aligned UTC instants at which a schedule fires.

Everything here is a pure function of its arguments: no clock, no I/O.

Cron schedules are evaluated in their IANA time zone with `cronsim`_ (see
``docs/cron-library.md`` for why cronsim and not croniter). Daylight-saving rules, which are
Debian cron's and cronsim's:

* **Fixed-time schedules** -- neither the minute nor the hour field starts with ``*`` (``30 2 * *
  *``, ``0 9 * * 1-5``, ``0,30 8-18 * * *``) -- follow the wall clock:

  - a local time skipped by a spring-forward transition runs **once, right after the gap**:
    ``30 2 * * *`` in America/New_York on 2026-03-08 runs at 03:00 EDT = 07:00 UTC. Several
    skipped times (``0,30 2 * * *``) collapse into that one 03:00 slot;
  - a local time repeated by a fall-back transition runs **once, at its first occurrence**:
    ``30 1 * * *`` in America/New_York on 2026-11-01 runs at 01:30 EDT = 05:30 UTC only.

* **Interval schedules** -- the minute or the hour field starts with ``*`` (``*/15 * * * *``,
  ``0 * * * *``, ``*/5 9-17 * * *``) -- follow elapsed time: they are evaluated on the UTC
  timeline and fire at every instant whose local time matches. Decision for the autumn day:
  ``*/15 * * * *`` in America/New_York on 2026-11-01 fires **eight times in the local hour
  01:00-01:59**: 01:00, 01:15, 01:30, 01:45 EDT (05:00-05:45 UTC) and again 01:00, 01:15, 01:30,
  01:45 EST (06:00-06:45 UTC), so the gap between two runs stays 15 real minutes all night and
  no collection window is left uncovered. In spring, 01:45 EST (06:45 UTC) is followed by 03:00
  EDT (07:00 UTC): again 15 real minutes, the non-existent 02:xx times simply do not occur.

``every`` schedules are plain arithmetic on the UTC timeline: ``anchor + k * every``, anchored at
the subscription's ``starts_at`` rounded up to the minute, else the Unix epoch (so ``every: 900``
without ``starts_at`` fires at :00, :15, :30 and :45 UTC). Time zones play no part.

A subscription's slots are its schedule's slots ``s`` with ``starts_at <= s < ends_at``
(half-open: a slot exactly at ``ends_at`` does not run).

.. _cronsim: https://pypi.org/project/cronsim/
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Final

from cronsim import CronSim

from shared.subscription import CronSchedule, EverySchedule, Schedule, Subscription

__all__ = [
    "EPOCH",
    "ScheduleExhausted",
    "ceil_minute",
    "every_anchor",
    "floor_minute",
    "iter_slots",
    "iter_subscription_slots",
    "next_run_for",
    "next_slot_after",
]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MINUTE: Final = timedelta(minutes=1)
_EPSILON: Final = timedelta(microseconds=1)


class ScheduleExhausted(ValueError):  # noqa: N818 - reads as a state, like StopIteration
    """The cron expression has no further slot (cronsim gives up after 50 years without one)."""


def _require_aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def floor_minute(value: datetime) -> datetime:
    """``value`` in UTC with seconds and microseconds cut off."""
    return _require_aware(value, "value").replace(second=0, microsecond=0)


def ceil_minute(value: datetime) -> datetime:
    """``value`` in UTC rounded up to the next whole minute (unchanged if already whole)."""
    floored = floor_minute(value)
    return floored if floored == value else floored + _ONE_MINUTE


def every_anchor(subscription: Subscription) -> datetime:
    """An ``every`` schedule's anchor: ``starts_at`` rounded up to the minute, else the epoch."""
    if subscription.starts_at is None:
        return EPOCH
    return ceil_minute(subscription.starts_at)


def _next_every(schedule: EverySchedule, after: datetime, anchor: datetime) -> datetime:
    period = timedelta(seconds=schedule.every)
    # Floor division on timedeltas gives the index of the last slot at or before ``after``, also
    # for ``after`` before the anchor (negative index).
    index = (after - anchor) // period
    return anchor + (index + 1) * period


def _next_cron(schedule: CronSchedule, after: datetime) -> datetime:
    local = after.astimezone(schedule.zone)
    # For fixed-time schedules cronsim iterates on the naive wall clock, which forgets whether
    # ``after`` was in the first or the second pass of a repeated autumn hour; it can then offer a
    # first-occurrence slot that is already behind us. Those are skipped: strictly after holds.
    for candidate in CronSim(schedule.cron, local):
        slot = candidate.astimezone(UTC)
        if slot > after:
            return slot
    raise ScheduleExhausted(f"cron {schedule.cron!r} has no slot after {after.isoformat()}")


def next_slot_after(
    schedule: Schedule, after: datetime, *, anchor: datetime | None = None
) -> datetime:
    """The first slot of ``schedule`` strictly after ``after``.

    ``after`` must be timezone-aware; the result is a minute-aligned UTC-aware datetime.
    ``anchor`` applies to ``every`` schedules only (default: the Unix epoch); pass
    :func:`every_anchor` of the subscription, or use :func:`next_run_for`, which does.
    Raises :class:`ScheduleExhausted` if a cron expression never fires again.
    """
    after_utc = _require_aware(after, "after")
    if isinstance(schedule, EverySchedule):
        base = EPOCH if anchor is None else ceil_minute(anchor)
        return _next_every(schedule, after_utc, base)
    return _next_cron(schedule, after_utc)


def iter_slots(
    schedule: Schedule,
    start_exclusive: datetime,
    end_inclusive: datetime,
    *,
    anchor: datetime | None = None,
) -> Iterator[datetime]:
    """Every slot ``s`` of ``schedule`` with ``start_exclusive < s <= end_inclusive``, ascending."""
    end = _require_aware(end_inclusive, "end_inclusive")
    current = _require_aware(start_exclusive, "start_exclusive")
    while True:
        try:
            current = next_slot_after(schedule, current, anchor=anchor)
        except ScheduleExhausted:
            return
        if current > end:
            return
        yield current


def next_run_for(subscription: Subscription, after: datetime) -> datetime | None:
    """The subscription's first slot strictly after ``after``, or ``None`` if it has none left.

    Honours ``starts_at`` (no slot before it) and ``ends_at`` (no slot at or after it): ``None``
    means the schedule has no slot before ``ends_at`` and the subscription should expire.
    ``paused`` and ``status`` are not looked at (see :func:`shared.scheduling.plan_tick`).
    """
    lower = _require_aware(after, "after")
    if subscription.starts_at is not None and lower < subscription.starts_at:
        # Strictly after (starts_at - 1 µs) is "at or after starts_at" at datetime's resolution.
        lower = subscription.starts_at - _EPSILON
    try:
        slot = next_slot_after(subscription.schedule, lower, anchor=every_anchor(subscription))
    except ScheduleExhausted:
        return None
    if subscription.ends_at is not None and slot >= subscription.ends_at:
        return None
    return slot


def iter_subscription_slots(
    subscription: Subscription, start_exclusive: datetime, end_inclusive: datetime
) -> Iterator[datetime]:
    """The subscription's slots ``s`` with ``start_exclusive < s <= end_inclusive``, ascending.

    Like :func:`iter_slots`, limited to ``starts_at <= s < ends_at`` and with the subscription's
    ``every`` anchor.
    """
    end = _require_aware(end_inclusive, "end_inclusive")
    current: datetime | None = _require_aware(start_exclusive, "start_exclusive")
    while current is not None:
        current = next_run_for(subscription, current)
        if current is None or current > end:
            return
        yield current
