"""``every`` anchoring, starts_at / ends_at, and the argument checks of the slot functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.scheduling import (
    EPOCH,
    every_anchor,
    iter_slots,
    iter_subscription_slots,
    next_run_for,
    next_slot_after,
)
from shared.subscription import CronSchedule, EverySchedule, Subscription


def utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


def subscription(schedule: dict[str, Any], **extra: Any) -> Subscription:
    doc = {"name": "n", "schedule": schedule, "sources": [{"id": "s", "kind": "rss"}], **extra}
    return Subscription.from_document("sub-1", doc)


def test_every_without_anchor_is_aligned_to_the_epoch() -> None:
    slots = list(
        iter_slots(EverySchedule(900), utc("2026-05-01 09:07:00"), utc("2026-05-01 10:00:00"))
    )
    assert slots == [utc("2026-05-01 09:15:00"), utc("2026-05-01 09:30:00"),
                     utc("2026-05-01 09:45:00"), utc("2026-05-01 10:00:00")]  # fmt: skip


def test_every_anchored_at_starts_at() -> None:
    sub = subscription({"every": 3600}, starts_at="2026-05-01T09:07:00Z")
    assert every_anchor(sub) == utc("2026-05-01 09:07:00")
    slots = list(
        iter_subscription_slots(sub, utc("2026-05-01 00:00:00"), utc("2026-05-01 12:00:00"))
    )
    assert slots == [utc("2026-05-01 09:07:00"), utc("2026-05-01 10:07:00"),
                     utc("2026-05-01 11:07:00")]  # fmt: skip


def test_every_anchor_with_seconds_rounds_up_to_the_minute() -> None:
    sub = subscription({"every": 600}, starts_at="2026-05-01T09:07:30+02:00")
    assert every_anchor(sub) == utc("2026-05-01 07:08:00")
    assert next_run_for(sub, utc("2026-05-01 00:00:00")) == utc("2026-05-01 07:08:00")
    assert next_run_for(sub, utc("2026-05-01 07:08:00")) == utc("2026-05-01 07:18:00")


def test_every_ignores_daylight_saving() -> None:
    # 2026-03-08 in New York: an every-hour schedule keeps 60 real minutes between slots.
    slots = list(
        iter_slots(EverySchedule(3600), utc("2026-03-08 05:30:00"), utc("2026-03-08 09:00:00"))
    )
    assert slots == [utc("2026-03-08 06:00:00"), utc("2026-03-08 07:00:00"),
                     utc("2026-03-08 08:00:00"), utc("2026-03-08 09:00:00")]  # fmt: skip


def test_every_next_slot_with_explicit_anchor_before_and_after_it() -> None:
    anchor = utc("2026-01-01 00:05:00")
    schedule = EverySchedule(86400)
    assert next_slot_after(schedule, utc("2025-12-30 12:00:00"), anchor=anchor) == utc(
        "2025-12-31 00:05:00"
    )
    assert next_slot_after(schedule, anchor, anchor=anchor) == utc("2026-01-02 00:05:00")
    assert next_slot_after(schedule, anchor - timedelta(microseconds=1), anchor=anchor) == anchor


def test_strictly_after_with_sub_minute_input() -> None:
    schedule = CronSchedule("* * * * *")
    assert next_slot_after(schedule, utc("2026-05-01 09:00:00")) == utc("2026-05-01 09:01:00")
    assert next_slot_after(
        schedule, utc("2026-05-01 08:59:59") + timedelta(microseconds=999_999)
    ) == (utc("2026-05-01 09:00:00"))
    assert next_slot_after(schedule, utc("2026-05-01 09:00:00") + timedelta(microseconds=1)) == (
        utc("2026-05-01 09:01:00")
    )


def test_non_utc_aware_input_gives_utc_output() -> None:
    paris_morning = datetime(2026, 6, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    slot = next_slot_after(CronSchedule("0 9 * * *", "Europe/Paris"), paris_morning)
    assert slot == utc("2026-06-02 07:00:00")
    assert slot.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_slot_after(EverySchedule(60), datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        list(iter_slots(EverySchedule(60), utc("2026-01-01 00:00:00"), datetime(2026, 1, 2)))


def test_no_slot_before_starts_at_and_a_slot_exactly_at_starts_at_runs() -> None:
    sub = subscription({"cron": "0 9 * * *", "timezone": "UTC"}, starts_at="2026-06-10T09:00:00Z")
    assert next_run_for(sub, utc("2026-06-01 00:00:00")) == utc("2026-06-10 09:00:00")
    assert next_run_for(sub, utc("2026-06-10 09:00:00")) == utc("2026-06-11 09:00:00")


def test_ends_at_is_exclusive_and_none_means_expire() -> None:
    sub = subscription({"cron": "0 9 * * *", "timezone": "UTC"}, ends_at="2026-06-12T09:00:00Z")
    assert next_run_for(sub, utc("2026-06-10 12:00:00")) == utc("2026-06-11 09:00:00")
    # The 2026-06-12 09:00 slot is at ends_at: it does not run, nothing is left.
    assert next_run_for(sub, utc("2026-06-11 09:00:00")) is None
    assert next_run_for(sub, utc("2026-07-01 00:00:00")) is None


def test_window_between_starts_and_ends_without_any_slot_expires_at_once() -> None:
    sub = subscription(
        {"cron": "0 9 * * *", "timezone": "UTC"},
        starts_at="2026-06-10T10:00:00Z",
        ends_at="2026-06-11T08:00:00Z",
    )
    assert next_run_for(sub, utc("2026-06-01 00:00:00")) is None


def test_iter_subscription_slots_honours_both_bounds() -> None:
    sub = subscription(
        {"every": 3600}, starts_at="2026-06-10T10:30:00Z", ends_at="2026-06-10T13:30:00Z"
    )
    slots = list(
        iter_subscription_slots(sub, utc("2026-06-10 00:00:00"), utc("2026-06-11 00:00:00"))
    )
    assert slots == [utc("2026-06-10 10:30:00"), utc("2026-06-10 11:30:00"),
                     utc("2026-06-10 12:30:00")]  # fmt: skip


def test_rare_cron_is_found_years_ahead() -> None:
    schedule = CronSchedule("0 0 29 2 *")  # every 29 February
    assert next_slot_after(schedule, utc("2026-01-01 00:00:00")) == utc("2028-02-29 00:00:00")


def test_epoch_is_the_unix_epoch() -> None:
    assert utc("1970-01-01 00:00:00") == EPOCH
    assert EPOCH.timestamp() == 0
