"""Slots: the minute-aligned UTC instants at which a schedule fires.

Everything here is a pure function of its arguments: no clock, no I/O.

Cron schedules are evaluated in their IANA time zone: `cronsim`_ matches the fields on naive
wall-clock times, and this module maps wall clock to UTC itself (cronsim's own mapping fails
around transitions that are not whole-hour steps; see ``docs/cron-library.md``). The
daylight-saving rules, which are Debian cron's:

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

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

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
_TRANSITION_SCAN_STEP: Final = timedelta(hours=3)
_MAX_GAP_MINUTES: Final = 2 * 24 * 60


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


def _offset(zone: ZoneInfo, instant: datetime) -> timedelta:
    offset = instant.astimezone(zone).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset


def _next_transition(zone: ZoneInfo, start: datetime, end: datetime) -> datetime | None:
    """The first instant in ``(start, end]`` whose UTC offset differs from ``start``'s, if any.

    Scans in steps of :data:`_TRANSITION_SCAN_STEP` (no zone changes its offset twice within
    one), then bisects to the second (transitions fall on whole seconds).
    """
    base = _offset(zone, start)
    low = start
    while low < end:
        high = min(low + _TRANSITION_SCAN_STEP, end)
        if _offset(zone, high) != base:
            lo_s, hi_s = math.floor(low.timestamp()), math.ceil(high.timestamp())
            while hi_s - lo_s > 1:
                mid = (lo_s + hi_s) // 2
                if _offset(zone, datetime.fromtimestamp(mid, UTC)) == base:
                    lo_s = mid
                else:
                    hi_s = mid
            return datetime.fromtimestamp(hi_s, UTC)
        low = high
    return None


def _is_fixed_time(expression: str) -> bool:
    # Debian cron's rule, which cronsim also follows: a wildcard-led minute or hour field makes
    # the job an interval job.
    minute, hour = expression.split()[:2]
    return not minute.startswith("*") and not hour.startswith("*")


def _first_occurrence(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant of naive local ``wall``: its first occurrence, or the end of a gap it is in."""
    candidate = wall
    for _ in range(_MAX_GAP_MINUTES):
        instant = candidate.replace(tzinfo=zone, fold=0).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == candidate:
            return instant
        candidate += _ONE_MINUTE
    raise ScheduleExhausted(f"no real local time within two days after {wall} in {zone.key}")


def _next_fixed_time(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    # Walk the naive wall clock from after's wall time. Mapping wall times to first occurrences
    # never goes backwards, but after may be in the second pass of a repeated hour: earlier
    # first occurrences are then skipped, which keeps "strictly after".
    wall = after.astimezone(zone).replace(tzinfo=None)
    for candidate in CronSim(expression, wall):
        slot = _first_occurrence(candidate, zone)
        if slot > after:
            return slot
    raise ScheduleExhausted(f"cron {expression!r} has no slot after {after.isoformat()}")


def _next_interval(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    # The UTC timeline is cut into stretches of constant offset. Within one, wall time is
    # instant + offset, so the first matching wall time is the first slot -- unless the offset
    # changes before it, in which case the search resumes at the transition (inclusive).
    start, inclusive = after, False
    while True:
        offset = _offset(zone, start)
        wall = (start + offset).replace(tzinfo=None)
        # cronsim returns times strictly after its (whole-second) start.
        origin = wall - timedelta(seconds=1) if inclusive else wall
        candidate = next(iter(CronSim(expression, origin)), None)
        if candidate is None:
            raise ScheduleExhausted(f"cron {expression!r} has no slot after {after.isoformat()}")
        slot = (candidate - offset).replace(tzinfo=UTC)
        transition = _next_transition(zone, start, slot)
        if transition is None:
            return slot
        start, inclusive = transition, True


def _next_cron(schedule: CronSchedule, after: datetime) -> datetime:
    # cronsim only ever sees naive wall-clock times: its own time zone handling misbehaves around
    # transitions that are not whole-hour steps at whole hours (Australia/Lord_Howe's 30-minute
    # shift, Pacific/Chatham's 02:45) -- it can loop forever or skip slots. The mapping between
    # wall clock and UTC is done here instead, by the rules in the module docstring.
    zone = schedule.zone
    if _is_fixed_time(schedule.cron):
        return _next_fixed_time(schedule.cron, zone, after)
    return _next_interval(schedule.cron, zone, after)


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
