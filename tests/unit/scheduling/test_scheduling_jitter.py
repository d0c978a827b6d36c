"""jitter_offset: deterministic per (subscription, slot), within bounds, spread evenly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.scheduling import jitter_offset

SLOT = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def test_deterministic_and_independent_of_the_slot_offset_notation() -> None:
    same_instant = SLOT.astimezone(timezone(timedelta(hours=2)))
    assert jitter_offset("acme", SLOT, 59) == jitter_offset("acme", same_instant, 59)
    assert jitter_offset("acme", SLOT, 59) == jitter_offset("acme", SLOT, 59)


def test_golden_value() -> None:
    # Pinned so a redelivered due message in a new release schedules its tasks at the same time.
    assert jitter_offset("acme-news", SLOT, 59) == timedelta(milliseconds=53_951)


def test_within_bounds_and_varies_by_subscription_and_slot() -> None:
    offsets = {
        jitter_offset(f"sub-{i}", SLOT + timedelta(minutes=m), 30)
        for i in range(50)
        for m in range(20)
    }
    assert all(timedelta(0) <= o <= timedelta(seconds=30) for o in offsets)
    assert len(offsets) > 900  # 1000 pairs, millisecond steps: nearly all distinct
    per_slot = {jitter_offset("acme", SLOT + timedelta(minutes=m), 59) for m in range(100)}
    assert len(per_slot) > 95


def test_roughly_uniform_over_the_range() -> None:
    buckets = [0] * 6
    for i in range(12_000):
        offset = jitter_offset(f"sub-{i}", SLOT, 59)
        buckets[min(int(offset.total_seconds() // 10), 5)] += 1
    # 6 buckets of 10 s over [0, 59]: the last one is 9.001 s wide; expect ~2000 per bucket.
    assert all(1700 < count < 2300 for count in buckets), buckets


def test_zero_means_no_jitter_and_bad_arguments_are_refused() -> None:
    assert jitter_offset("acme", SLOT, 0) == timedelta(0)
    with pytest.raises(ValueError):
        jitter_offset("acme", SLOT, -1)
    with pytest.raises(ValueError):
        jitter_offset("acme", datetime(2026, 5, 4, 9, 0), 10)
