"""Planning one tick for one subscription: which slots to publish, which to drop, what comes next.

Vocabulary (all instants UTC; ``N`` is the subscription's stored ``next_run_at``, ``T`` the tick's
time, ``grace`` :data:`DEFAULT_ON_TIME_GRACE` unless overridden):

* **due** slots: the subscription's slots ``s`` with ``N <= s <= T`` (its schedule's slots,
  limited to ``starts_at <= s < ends_at``). Nothing is due when ``T < N``.
* the **current** slot: the newest due slot, provided ``T - s <= grace``. It is published with
  reason ``schedule`` (unless the subscription is paused). Ticks come once a minute; the grace of
  90 s lets one lost or late tick go by without a daily run being treated as missed, while still
  counting anything older as downtime.
* **missed** slots: every other due slot. What happens to them is the catch-up policy's choice,
  limited to the **window**: only missed slots ``s >= floor_minute(T) - window`` can be published
  (reason ``catch-up``); older ones are dropped as ``outside-window``.

  - ``skip``: no missed slot is published (the current slot still is);
  - ``latest``: the newest missed slot inside the window is published, the rest are dropped;
  - ``all``: every missed slot inside the window is published, at most ``max_slots`` of them:
    when there are more, the **newest** ``max_slots`` are kept and the older ones dropped as
    ``max-slots``. ``max_slots`` counts catch-up slots only; the current slot is never given up.

* a **paused** subscription publishes nothing: its due slots are dropped as ``paused`` and
  ``next_run_at`` moves on, so resuming does not replay the pause (resume starts from "now").
* an **expired** subscription (``status == "expired"``) is never due again.

The invariant the select use case relies on: for a plan made at ``T`` from ``N``, every due slot
``s`` (``N <= s <= T``) is in exactly one of ``plan.publish``, ``plan.dropped``, or
``plan.dropped_range`` (half-open, not enumerated, so a long outage costs no work); the new
``plan.next_run_at`` is the first slot after ``T`` (``None``: no slot is left before ``ends_at``,
the subscription is expired). Storing ``plan.next_run_at`` and feeding it to the next tick's plan
therefore accounts for every slot exactly once, whatever the sequence of ticks: nothing between
two ticks is ever lost or published twice (duplicate, late and out-of-order ticks find ``T < N``
and get an empty plan).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeAlias

from shared.scheduling.slots import floor_minute, iter_subscription_slots, next_run_for
from shared.subscription import Subscription

__all__ = [
    "DEFAULT_ON_TIME_GRACE",
    "DropReason",
    "DroppedSlot",
    "PlannedSlot",
    "SlotReason",
    "TickPlan",
    "plan_tick",
]

SlotReason: TypeAlias = Literal["schedule", "catch-up"]
DropReason: TypeAlias = Literal["outside-window", "policy", "max-slots", "paused"]

DEFAULT_ON_TIME_GRACE: Final = timedelta(seconds=90)
_EPSILON: Final = timedelta(microseconds=1)


@dataclass(frozen=True)
class PlannedSlot:
    """A slot to publish as one ``dispatcher-due`` message."""

    slot: datetime
    reason: SlotReason


@dataclass(frozen=True)
class DroppedSlot:
    """A due slot deliberately not published, and why."""

    slot: datetime
    reason: DropReason


@dataclass(frozen=True)
class TickPlan:
    """The outcome of :func:`plan_tick`.

    ``publish`` and ``dropped`` are in ascending slot order. ``dropped_range`` is ``(start, end)``,
    half-open: every due slot in it was dropped as ``outside-window`` without being enumerated.
    ``next_run_at`` is the value to store (``None`` once expired); ``advanced`` says whether it
    differs from the stored one, i.e. whether a write is needed.
    """

    publish: tuple[PlannedSlot, ...]
    dropped: tuple[DroppedSlot, ...]
    dropped_range: tuple[datetime, datetime] | None
    next_run_at: datetime | None
    expired: bool
    advanced: bool


def _aware_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def plan_tick(
    subscription: Subscription,
    next_run_at: datetime | None,
    tick_time: datetime,
    *,
    on_time_grace: timedelta = DEFAULT_ON_TIME_GRACE,
) -> TickPlan:
    """Plan one tick at ``tick_time`` for a subscription whose stored next slot is ``next_run_at``.

    See the module docstring for the rules and the invariant. ``next_run_at`` is passed
    separately from ``subscription.next_run_at`` so the caller states which value its
    conditional write is based on; ``None`` (not scheduled) plans nothing and expires nothing.
    """
    tick = _aware_utc(tick_time, "tick_time")
    if on_time_grace < timedelta(0):
        raise ValueError("on_time_grace must not be negative")

    if subscription.status == "expired":
        return TickPlan((), (), None, None, expired=True, advanced=next_run_at is not None)
    if next_run_at is None:
        # Not scheduled (e.g. paused with next_run_at cleared): nothing is due, nothing expires.
        # Whoever resumes it sets next_run_at = next_run_for(subscription, now).
        return TickPlan((), (), None, None, expired=False, advanced=False)

    stored = _aware_utc(next_run_at, "next_run_at")
    if tick < stored:
        # Not due: a duplicate, late or out-of-order tick. Only a deadline can change anything.
        if subscription.ends_at is not None and stored >= subscription.ends_at:
            return TickPlan((), (), None, None, expired=True, advanced=True)
        return TickPlan((), (), None, stored, expired=False, advanced=False)

    catch_up = subscription.effective_catch_up
    grace_start = tick - on_time_grace
    if subscription.paused or catch_up.policy == "skip":
        # Only the current slot can matter; missed slots are dropped wholesale.
        window_start = grace_start
    else:
        window_start = floor_minute(tick) - timedelta(seconds=catch_up.window)
    enumerate_from = max(stored, min(window_start, grace_start))
    dropped_range = (stored, enumerate_from) if enumerate_from > stored else None

    slots = list(iter_subscription_slots(subscription, enumerate_from - _EPSILON, tick))
    current: datetime | None = None
    if slots and slots[-1] >= grace_start:
        current = slots.pop()
    missed = slots

    publish: list[PlannedSlot] = []
    dropped: list[DroppedSlot] = []
    if subscription.paused:
        dropped.extend(DroppedSlot(s, "paused") for s in missed)
        if current is not None:
            dropped.append(DroppedSlot(current, "paused"))
    else:
        in_window = [s for s in missed if s >= window_start]
        dropped.extend(DroppedSlot(s, "outside-window") for s in missed if s < window_start)
        if catch_up.policy == "skip":
            keep: list[datetime] = []
            dropped.extend(DroppedSlot(s, "policy") for s in in_window)
        elif catch_up.policy == "latest":
            keep = in_window[-1:]
            dropped.extend(DroppedSlot(s, "policy") for s in in_window[:-1])
        else:
            cut = max(len(in_window) - catch_up.max_slots, 0)
            keep = in_window[cut:]
            dropped.extend(DroppedSlot(s, "max-slots") for s in in_window[:cut])
        publish.extend(PlannedSlot(s, "catch-up") for s in keep)
        if current is not None:
            publish.append(PlannedSlot(current, "schedule"))

    following = next_run_for(subscription, tick)
    return TickPlan(
        publish=tuple(publish),
        dropped=tuple(sorted(dropped, key=lambda d: d.slot)),
        dropped_range=dropped_range,
        next_run_at=following,
        expired=following is None,
        advanced=following != stored,
    )
