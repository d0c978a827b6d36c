"""plan_tick: catch-up policies after 90 minutes of downtime, pause/expiry, and the invariant
the select use case relies on (checked with hypothesis over random tick sequences)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.scheduling import (
    DEFAULT_ON_TIME_GRACE,
    PlannedSlot,
    TickPlan,
    iter_subscription_slots,
    next_run_for,
    plan_tick,
)
from shared.subscription import Subscription


def at(hhmm: str, day: str = "2026-05-04") -> datetime:
    """'09:30' -> 2026-05-04 09:30 UTC; '10:30:05' also accepted."""
    fmt = "%Y-%m-%d %H:%M:%S" if hhmm.count(":") == 2 else "%Y-%m-%d %H:%M"
    return datetime.strptime(f"{day} {hhmm}", fmt).replace(tzinfo=UTC)


def make(
    schedule: dict[str, Any], catch_up: dict[str, Any] | None = None, **extra: Any
) -> Subscription:
    doc: dict[str, Any] = {
        "name": "n",
        "schedule": schedule,
        "sources": [{"id": "s", "kind": "rss"}],
    }
    if catch_up is not None:
        doc["catch_up"] = catch_up
    doc.update(extra)
    return Subscription.from_document("sub-1", doc)


def published(plan: TickPlan) -> list[tuple[str, str]]:
    return [(p.slot.strftime("%H:%M"), p.reason) for p in plan.publish]


def dropped(plan: TickPlan) -> list[tuple[str, str]]:
    return [(d.slot.strftime("%H:%M"), d.reason) for d in plan.dropped]


EVERY_15 = {"cron": "*/15 * * * *", "timezone": "UTC"}
# The dispatcher was down from 09:00 to 10:30: next_run_at is still 09:00, the first tick back
# arrives at 10:30:05. Due: 09:00, 09:15, ..., 10:30 (7 slots). Window 3600 s from 10:30 -> 09:30.
DOWN_SINCE = at("09:00")
BACK_AT = at("10:30:05")


def test_skip_after_90_minutes_down_publishes_only_the_current_slot() -> None:
    plan = plan_tick(make(EVERY_15, {"policy": "skip"}), DOWN_SINCE, BACK_AT)
    assert published(plan) == [("10:30", "schedule")]
    # 09:00-10:15 are dropped without being enumerated.
    assert plan.dropped == ()
    assert plan.dropped_range == (at("09:00"), BACK_AT - DEFAULT_ON_TIME_GRACE)
    assert plan.next_run_at == at("10:45")
    assert (plan.expired, plan.advanced) == (False, True)


def test_absent_catch_up_means_skip() -> None:
    plan = plan_tick(make(EVERY_15), DOWN_SINCE, BACK_AT)
    assert published(plan) == [("10:30", "schedule")]


def test_latest_after_90_minutes_down() -> None:
    plan = plan_tick(make(EVERY_15, {"policy": "latest"}), DOWN_SINCE, BACK_AT)
    assert published(plan) == [("10:15", "catch-up"), ("10:30", "schedule")]
    assert dropped(plan) == [("09:30", "policy"), ("09:45", "policy"), ("10:00", "policy")]
    assert plan.dropped_range == (at("09:00"), at("09:30"))  # 09:00, 09:15: outside the window
    assert plan.next_run_at == at("10:45")


def test_all_after_90_minutes_down() -> None:
    plan = plan_tick(make(EVERY_15, {"policy": "all"}), DOWN_SINCE, BACK_AT)
    assert published(plan) == [
        ("09:30", "catch-up"),
        ("09:45", "catch-up"),
        ("10:00", "catch-up"),
        ("10:15", "catch-up"),
        ("10:30", "schedule"),
    ]
    assert plan.dropped == ()
    assert plan.dropped_range == (at("09:00"), at("09:30"))
    assert plan.next_run_at == at("10:45")


def test_all_with_a_wide_window_catches_up_everything() -> None:
    plan = plan_tick(make(EVERY_15, {"policy": "all", "window": 7200}), DOWN_SINCE, BACK_AT)
    assert published(plan) == [("09:00", "catch-up"), ("09:15", "catch-up"), ("09:30", "catch-up"),
                               ("09:45", "catch-up"), ("10:00", "catch-up"), ("10:15", "catch-up"),
                               ("10:30", "schedule")]  # fmt: skip
    assert plan.dropped_range is None and plan.dropped == ()


def test_all_capped_by_max_slots_keeps_the_newest() -> None:
    plan = plan_tick(make(EVERY_15, {"policy": "all", "max_slots": 2}), DOWN_SINCE, BACK_AT)
    assert published(plan) == [("10:00", "catch-up"), ("10:15", "catch-up"), ("10:30", "schedule")]
    assert dropped(plan) == [("09:30", "max-slots"), ("09:45", "max-slots")]


def test_every_minute_all_policy_is_capped_at_60_catch_up_slots_by_default() -> None:
    plan = plan_tick(make({"cron": "* * * * *"}, {"policy": "all"}), DOWN_SINCE, BACK_AT)
    catch_up = [p.slot for p in plan.publish if p.reason == "catch-up"]
    # Window 09:30..10:29 holds exactly 60 missed minutes; the cap (60) keeps them all.
    assert len(catch_up) == 60
    assert catch_up[0] == at("09:30") and catch_up[-1] == at("10:29")
    assert plan.publish[-1] == PlannedSlot(at("10:30"), "schedule")
    assert plan.dropped_range == (at("09:00"), at("09:30"))


def test_daily_slot_missed_by_90_minutes_is_outside_the_default_window() -> None:
    daily = {"cron": "0 9 * * *", "timezone": "UTC"}
    for policy in ("skip", "latest", "all"):
        plan = plan_tick(make(daily, {"policy": policy}), DOWN_SINCE, BACK_AT)
        assert plan.publish == (), policy
        assert plan.next_run_at == at("09:00", "2026-05-05")


def test_daily_slot_missed_by_90_minutes_is_caught_up_with_a_2_hour_window() -> None:
    daily = {"cron": "0 9 * * *", "timezone": "UTC"}
    plan = plan_tick(make(daily, {"policy": "latest", "window": 7200}), DOWN_SINCE, BACK_AT)
    assert published(plan) == [("09:00", "catch-up")]
    plan = plan_tick(make(daily, {"policy": "skip", "window": 7200}), DOWN_SINCE, BACK_AT)
    assert plan.publish == ()


def test_one_lost_tick_does_not_cost_a_daily_run_under_skip() -> None:
    # The 09:00 tick was lost; the 09:01 tick (delivered at 09:01:05) still runs the 09:00 slot.
    daily = {"cron": "0 9 * * *", "timezone": "UTC"}
    plan = plan_tick(make(daily), at("09:00"), at("09:01:05"))
    assert published(plan) == [("09:00", "schedule")]


def test_the_on_time_grace_is_inclusive() -> None:
    daily = {"cron": "0 9 * * *", "timezone": "UTC"}
    just_in = plan_tick(make(daily), at("09:00"), at("09:00") + DEFAULT_ON_TIME_GRACE)
    assert published(just_in) == [("09:00", "schedule")]
    too_late = plan_tick(
        make(daily), at("09:00"), at("09:00") + DEFAULT_ON_TIME_GRACE + timedelta(microseconds=1)
    )
    assert too_late.publish == ()


def test_on_time_tick_publishes_the_slot_once_and_a_repeat_tick_publishes_nothing() -> None:
    sub = make(EVERY_15, {"policy": "all"})
    first = plan_tick(sub, at("10:30"), at("10:30:02"))
    assert published(first) == [("10:30", "schedule")]
    assert first.next_run_at == at("10:45")
    assert first.dropped_range is None and first.dropped == ()
    # A duplicate or late tick sees the stored next_run_at 10:45 > its time: nothing to do.
    again = plan_tick(sub, at("10:45"), at("10:30:02"))
    assert again.publish == () and again.next_run_at == at("10:45")
    assert (again.advanced, again.expired) == (False, False)


def test_a_tick_between_slots_moves_nothing() -> None:
    plan = plan_tick(make(EVERY_15), at("10:45"), at("10:37:00"))
    assert plan == TickPlan((), (), None, at("10:45"), expired=False, advanced=False)


def test_paused_subscription_publishes_nothing_and_moves_on() -> None:
    plan = plan_tick(make(EVERY_15, {"policy": "all"}, paused=True), DOWN_SINCE, BACK_AT)
    assert plan.publish == ()
    assert dropped(plan) == [("10:30", "paused")]
    assert plan.dropped_range == (at("09:00"), BACK_AT - DEFAULT_ON_TIME_GRACE)
    assert plan.next_run_at == at("10:45")


def test_ends_at_expires_the_subscription_after_its_last_slot() -> None:
    sub = make(EVERY_15, {"policy": "all"}, ends_at="2026-05-04T10:45:00Z")
    plan = plan_tick(sub, at("10:30"), at("10:30:01"))
    assert published(plan) == [("10:30", "schedule")]
    assert plan.next_run_at is None and plan.expired and plan.advanced


def test_slots_at_or_after_ends_at_are_never_published_even_when_late() -> None:
    sub = make(EVERY_15, {"policy": "all"}, ends_at="2026-05-04T10:00:00Z")
    plan = plan_tick(sub, DOWN_SINCE, BACK_AT)
    assert published(plan) == [("09:30", "catch-up"), ("09:45", "catch-up")]
    assert plan.expired and plan.next_run_at is None


def test_stored_next_run_at_past_ends_at_expires_without_a_due_slot() -> None:
    sub = make(EVERY_15, ends_at="2026-05-04T10:00:00Z")
    plan = plan_tick(sub, at("10:00"), at("09:50"))
    assert plan.publish == () and plan.expired and plan.next_run_at is None


def test_expired_status_plans_nothing_and_clears_next_run_at() -> None:
    expired = make(EVERY_15, status="expired")
    plan = plan_tick(expired, at("10:30"), at("10:30:01"))
    assert plan.publish == () and plan.expired and plan.next_run_at is None and plan.advanced


def test_null_next_run_at_plans_nothing_and_does_not_expire() -> None:
    # E.g. a paused subscription whose next_run_at the CLI cleared.
    plan = plan_tick(make(EVERY_15, paused=True), None, at("10:30:01"))
    assert plan == TickPlan((), (), None, None, expired=False, advanced=False)


def test_starts_at_in_the_future_is_respected_by_catch_up() -> None:
    sub = make(EVERY_15, {"policy": "all"}, starts_at="2026-05-04T10:00:00Z")
    plan = plan_tick(sub, DOWN_SINCE, BACK_AT)
    assert published(plan) == [("10:00", "catch-up"), ("10:15", "catch-up"), ("10:30", "schedule")]


def test_dst_day_catch_up_uses_real_slots() -> None:
    # New York's autumn night, every 15 minutes, down from 01:00 EDT (05:00 UTC) for 90 minutes:
    # the window holds both passes of the repeated hour that fall inside it.
    sub = make({"cron": "*/15 * * * *", "timezone": "America/New_York"}, {"policy": "all"})
    plan = plan_tick(sub, at("05:00", "2026-11-01"), at("06:30:05", "2026-11-01"))
    assert published(plan) == [("05:30", "catch-up"), ("05:45", "catch-up"), ("06:00", "catch-up"),
                               ("06:15", "catch-up"), ("06:30", "schedule")]  # fmt: skip


def test_naive_or_negative_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_tick(make(EVERY_15), at("10:30"), datetime(2026, 5, 4, 10, 30))
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_tick(make(EVERY_15), datetime(2026, 5, 4, 10, 30), at("10:30"))
    with pytest.raises(ValueError, match="grace"):
        plan_tick(make(EVERY_15), at("10:30"), at("10:30"), on_time_grace=timedelta(seconds=-1))


# -- the invariant, over random subscriptions and tick sequences ---------------------------------

_SCHEDULES = [
    {"cron": "* * * * *"},
    {"cron": "*/15 * * * *", "timezone": "America/New_York"},
    {"cron": "30 1 * * *", "timezone": "Europe/London"},
    {"cron": "0,30 2 * * *", "timezone": "America/New_York"},
    {"cron": "*/7 0-3 * * *", "timezone": "Europe/London"},
    {"cron": "0 9 * * 1-5", "timezone": "Europe/London"},
    {"every": 60},
    {"every": 420},
    {"every": 3600},
]
_BASE = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)  # London's spring night follows


@st.composite
def subscriptions(draw: st.DrawFn) -> Subscription:
    # Paused one time in four.
    extra: dict[str, Any] = {"paused": draw(st.sampled_from([False, False, False, True]))}
    if draw(st.booleans()):
        extra["catch_up"] = {
            "policy": draw(st.sampled_from(["skip", "latest", "all"])),
            "window": draw(st.integers(60, 4 * 3600)),
            "max_slots": draw(st.integers(1, 30)),
        }
    if draw(st.booleans()):
        extra["starts_at"] = _BASE + timedelta(seconds=draw(st.integers(0, 6 * 3600)))
    if draw(st.booleans()):
        extra["ends_at"] = _BASE + timedelta(seconds=draw(st.integers(6 * 3600 + 1, 30 * 3600)))
    doc = {"name": "n", "schedule": draw(st.sampled_from(_SCHEDULES)),
           "sources": [{"id": "s", "kind": "rss"}], **extra}  # fmt: skip
    return Subscription.from_document("prop", doc)


@settings(max_examples=200, deadline=None)
@given(
    sub=subscriptions(),
    gaps=st.lists(st.integers(min_value=-300, max_value=5 * 3600), min_size=1, max_size=40),
    grace_s=st.sampled_from([0, 30, 60, 90, 150]),
)
def test_no_slot_is_ever_lost_or_published_twice(
    sub: Subscription, gaps: list[int], grace_s: int
) -> None:
    """Feed each plan's next_run_at into the next tick; every slot is accounted for exactly once.

    Gaps can be negative (out-of-order or duplicate ticks) or hours long (downtime).
    """
    grace = timedelta(seconds=grace_s)
    first = next_run_for(sub, _BASE)
    stored = first
    tick = _BASE
    latest_tick = _BASE
    accounted: list[datetime] = []
    published_slots: list[datetime] = []
    for gap in gaps:
        tick = tick + timedelta(seconds=gap, microseconds=abs(gap) % 1000)
        latest_tick = max(latest_tick, tick)
        plan = plan_tick(sub, stored, tick, on_time_grace=grace)
        if stored is None:
            assert plan.publish == () and plan.next_run_at is None
            continue
        if tick < stored:
            assert plan.publish == () and plan.dropped == () and plan.dropped_range is None
            assert plan.next_run_at in (stored, None)
        else:
            due = list(iter_subscription_slots(sub, stored - timedelta(microseconds=1), tick))
            listed = [p.slot for p in plan.publish] + [d.slot for d in plan.dropped]
            unlisted: list[datetime] = []
            if plan.dropped_range is not None:
                low, high = plan.dropped_range
                assert low == stored and low < high <= tick
                unlisted = [s for s in due if s < high]
            # Exactly once: the three sets partition the due slots.
            assert sorted(listed + unlisted) == due
            assert len(set(listed + unlisted)) == len(due)
            # New next_run_at: the first slot after the tick.
            assert plan.next_run_at == next_run_for(sub, tick)
            assert plan.next_run_at is None or plan.next_run_at > tick
            assert plan.expired == (plan.next_run_at is None)
            # Published slots ascend; policy limits hold.
            slots = [p.slot for p in plan.publish]
            assert slots == sorted(slots) and len(set(slots)) == len(slots)
            policy = sub.effective_catch_up
            catch_up = [p.slot for p in plan.publish if p.reason == "catch-up"]
            on_time = [p.slot for p in plan.publish if p.reason == "schedule"]
            assert len(on_time) <= 1
            assert all(tick - s <= grace for s in on_time)
            if on_time:
                assert on_time[0] == due[-1]
            window_start = tick.replace(second=0, microsecond=0) - timedelta(seconds=policy.window)
            assert all(s >= window_start for s in catch_up)
            limit = {"skip": 0, "latest": 1, "all": policy.max_slots}[policy.policy]
            assert len(catch_up) <= (0 if sub.paused else limit)
            if policy.policy == "all" and not sub.paused:
                in_window = [s for s in due if s >= window_start and s not in on_time]
                assert catch_up == in_window[-policy.max_slots :]
            if sub.paused:
                assert plan.publish == ()
            accounted.extend(listed + unlisted)
            published_slots.extend(slots)
        stored = plan.next_run_at
    # Across the whole sequence: published slots strictly increase, nothing counted twice, and
    # everything from the first next_run_at up to the last processed point is accounted for.
    assert published_slots == sorted(published_slots)
    assert len(set(published_slots)) == len(published_slots)
    assert len(set(accounted)) == len(accounted)
    if first is not None:
        end = latest_tick if stored is None else stored - timedelta(microseconds=1)
        everything = list(iter_subscription_slots(sub, first - timedelta(microseconds=1), end))
        assert sorted(accounted) == everything
