"""The pure scheduling core: slots, catch-up planning and jitter. No clock, no I/O.

* :func:`next_slot_after` / :func:`iter_slots`: a schedule's minute-aligned UTC slots (cron in its
  IANA time zone, DST rules in :mod:`shared.scheduling.slots`; ``every`` on the UTC timeline).
* :func:`next_run_for` / :func:`iter_subscription_slots`: the same, honouring ``starts_at`` and
  ``ends_at`` (``None``: nothing left, expire).
* :func:`plan_tick`: what one tick publishes for one subscription and the next ``next_run_at``
  (rules and the no-slot-lost invariant in :mod:`shared.scheduling.catchup`).
* :func:`jitter_offset`: a deterministic delay inside the minute per (subscription, slot).
"""

from __future__ import annotations

from shared.scheduling.catchup import (
    DEFAULT_ON_TIME_GRACE,
    DroppedSlot,
    DropReason,
    PlannedSlot,
    SlotReason,
    TickPlan,
    plan_tick,
)
from shared.scheduling.jitter import jitter_offset
from shared.scheduling.slots import (
    EPOCH,
    ScheduleExhausted,
    ceil_minute,
    every_anchor,
    floor_minute,
    iter_slots,
    iter_subscription_slots,
    next_run_for,
    next_slot_after,
)

__all__ = [
    "DEFAULT_ON_TIME_GRACE",
    "EPOCH",
    "DropReason",
    "DroppedSlot",
    "PlannedSlot",
    "ScheduleExhausted",
    "SlotReason",
    "TickPlan",
    "ceil_minute",
    "every_anchor",
    "floor_minute",
    "iter_slots",
    "iter_subscription_slots",
    "jitter_offset",
    "next_run_for",
    "next_slot_after",
    "plan_tick",
]
