"""Cron slots across the 2026 DST transitions, with every expected slot listed by hand.

Transitions (from the IANA database):
- America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC);
  2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC), so 01:00-01:59 local happens twice.
- Europe/London: 2026-03-29 01:00 GMT -> 02:00 BST (01:00 UTC);
  2026-10-25 02:00 BST -> 01:00 GMT (01:00 UTC), so 01:00-01:59 local happens twice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.scheduling import iter_slots, next_slot_after
from shared.subscription import CronSchedule

NY = "America/New_York"
LONDON = "Europe/London"


def utc(text: str) -> datetime:
    """'2026-03-08 07:00' -> aware UTC datetime (keeps the tables below readable)."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


# (cron, zone, window start (exclusive, UTC), window end (inclusive, UTC), expected UTC slots)
CASES: dict[str, tuple[str, str, str, str, list[str]]] = {
    # -- America/New_York, spring forward 2026-03-08 --------------------------------------
    "ny-spring-daily-0230": (
        "30 2 * * *",
        NY,
        "2026-03-07 00:00",
        "2026-03-10 00:00",
        [
            "2026-03-07 07:30",  # 02:30 EST
            "2026-03-08 07:00",  # 02:30 does not exist: runs once right after the gap, 03:00 EDT
            "2026-03-09 06:30",  # 02:30 EDT
        ],
    ),
    "ny-spring-every-15": (
        "*/15 * * * *",
        NY,
        "2026-03-08 05:30",
        "2026-03-08 08:00",
        [
            "2026-03-08 05:45",  # 00:45 EST
            "2026-03-08 06:00",  # 01:00 EST
            "2026-03-08 06:15",
            "2026-03-08 06:30",
            "2026-03-08 06:45",  # 01:45 EST
            "2026-03-08 07:00",  # 03:00 EDT: 15 real minutes later, no 02:xx
            "2026-03-08 07:15",
            "2026-03-08 07:30",
            "2026-03-08 07:45",
            "2026-03-08 08:00",  # 04:00 EDT
        ],
    ),
    # -- America/New_York, fall back 2026-11-01 -------------------------------------------
    "ny-autumn-daily-0130": (
        "30 1 * * *",
        NY,
        "2026-10-31 00:00",
        "2026-11-03 00:00",
        [
            "2026-10-31 05:30",  # 01:30 EDT
            "2026-11-01 05:30",  # 01:30 EDT, first occurrence only (not 06:30 = 01:30 EST)
            "2026-11-02 06:30",  # 01:30 EST
        ],
    ),
    "ny-autumn-daily-0230": (
        "30 2 * * *",
        NY,
        "2026-10-31 00:00",
        "2026-11-03 00:00",
        [
            "2026-10-31 06:30",  # 02:30 EDT
            "2026-11-01 07:30",  # 02:30 EST (02:xx is not repeated in New York)
            "2026-11-02 07:30",
        ],
    ),
    "ny-autumn-every-15": (
        "*/15 * * * *",
        NY,
        "2026-11-01 04:30",
        "2026-11-01 07:15",
        [
            "2026-11-01 04:45",  # 00:45 EDT
            "2026-11-01 05:00",  # 01:00 EDT
            "2026-11-01 05:15",  # 01:15 EDT
            "2026-11-01 05:30",  # 01:30 EDT
            "2026-11-01 05:45",  # 01:45 EDT
            "2026-11-01 06:00",  # 01:00 EST: the repeated hour runs again, every 15 real minutes
            "2026-11-01 06:15",  # 01:15 EST
            "2026-11-01 06:30",  # 01:30 EST
            "2026-11-01 06:45",  # 01:45 EST
            "2026-11-01 07:00",  # 02:00 EST
            "2026-11-01 07:15",  # 02:15 EST
        ],
    ),
    # -- Europe/London, spring forward 2026-03-29 -----------------------------------------
    "london-spring-daily-0130": (
        "30 1 * * *",
        LONDON,
        "2026-03-28 00:00",
        "2026-03-31 00:00",
        [
            "2026-03-28 01:30",  # 01:30 GMT
            "2026-03-29 01:00",  # 01:30 does not exist: runs at 02:00 BST
            "2026-03-30 00:30",  # 01:30 BST
        ],
    ),
    "london-spring-daily-0230": (
        "30 2 * * *",
        LONDON,
        "2026-03-28 00:00",
        "2026-03-31 00:00",
        [
            "2026-03-28 02:30",  # 02:30 GMT
            "2026-03-29 01:30",  # 02:30 BST (London's gap is 01:xx, 02:30 exists)
            "2026-03-30 01:30",
        ],
    ),
    "london-spring-every-15": (
        "*/15 * * * *",
        LONDON,
        "2026-03-29 00:15",
        "2026-03-29 02:00",
        [
            "2026-03-29 00:30",  # 00:30 GMT
            "2026-03-29 00:45",  # 00:45 GMT
            "2026-03-29 01:00",  # 02:00 BST: no 01:xx local that night
            "2026-03-29 01:15",
            "2026-03-29 01:30",
            "2026-03-29 01:45",
            "2026-03-29 02:00",  # 03:00 BST
        ],
    ),
    # -- Europe/London, fall back 2026-10-25 ----------------------------------------------
    "london-autumn-daily-0130": (
        "30 1 * * *",
        LONDON,
        "2026-10-24 00:00",
        "2026-10-27 00:00",
        [
            "2026-10-24 00:30",  # 01:30 BST
            "2026-10-25 00:30",  # 01:30 BST, first occurrence only (not 01:30 UTC = 01:30 GMT)
            "2026-10-26 01:30",  # 01:30 GMT
        ],
    ),
    "london-autumn-daily-0230": (
        "30 2 * * *",
        LONDON,
        "2026-10-24 00:00",
        "2026-10-27 00:00",
        [
            "2026-10-24 01:30",  # 02:30 BST
            "2026-10-25 02:30",  # 02:30 GMT
            "2026-10-26 02:30",
        ],
    ),
    "london-autumn-every-15": (
        "*/15 * * * *",
        LONDON,
        "2026-10-24 23:30",
        "2026-10-25 02:00",
        [
            "2026-10-24 23:45",  # 00:45 BST
            "2026-10-25 00:00",  # 01:00 BST
            "2026-10-25 00:15",
            "2026-10-25 00:30",
            "2026-10-25 00:45",  # 01:45 BST
            "2026-10-25 01:00",  # 01:00 GMT: the repeated hour runs again
            "2026-10-25 01:15",
            "2026-10-25 01:30",
            "2026-10-25 01:45",  # 01:45 GMT
            "2026-10-25 02:00",  # 02:00 GMT
        ],
    ),
    # -- several wall-clock times inside one gap collapse into one slot -------------------
    "ny-spring-two-times-in-gap": (
        "0,30 2 * * *",
        NY,
        "2026-03-07 12:00",
        "2026-03-09 12:00",
        [
            "2026-03-08 07:00",  # 02:00 and 02:30 EST do not exist: one run at 03:00 EDT
            "2026-03-09 06:00",  # 02:00 EDT
            "2026-03-09 06:30",  # 02:30 EDT
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_iter_slots_matches_the_hand_listed_slots(case: str) -> None:
    cron, zone, start, end, expected = CASES[case]
    slots = list(iter_slots(CronSchedule(cron, zone), utc(start), utc(end)))
    assert slots == [utc(s) for s in expected]
    assert all(s.tzinfo is UTC for s in slots)


@pytest.mark.parametrize("case", sorted(CASES))
def test_next_slot_after_from_any_point_agrees_with_the_list(case: str) -> None:
    """From every minute and half-minute of the window, the next slot is the next listed one.

    This covers starting inside the repeated hour (either pass) and inside the gap.
    """
    cron, zone, start, end, expected = CASES[case]
    schedule = CronSchedule(cron, zone)
    listed = [utc(s) for s in expected]
    after = utc(start)
    stop = min(utc(end), listed[-1]) - timedelta(seconds=30)
    while after < stop:
        want = next(s for s in listed if s > after)
        assert next_slot_after(schedule, after) == want, after
        after += timedelta(seconds=30)


def test_after_inside_the_second_pass_of_the_repeated_hour() -> None:
    # 06:10 UTC on 2026-11-01 is 01:10 EST, the second 01:10 of the night. 01:30 EDT (05:30 UTC)
    # already ran; it must not be offered again, nor may 01:30 EST run.
    schedule = CronSchedule("30 1 * * *", NY)
    assert next_slot_after(schedule, utc("2026-11-01 06:10")) == utc("2026-11-02 06:30")


_TRANSITIONS = [utc("2026-03-08 07:00"), utc("2026-11-01 06:00"), utc("2026-03-29 01:00"),
                utc("2026-10-25 01:00")]  # fmt: skip
_EXPRESSIONS = ["30 2 * * *", "30 1 * * *", "*/15 * * * *", "0 * * * *", "*/7 1-3 * * *",
                "0,30 2 * * *", "15 1,2 * * 0", "5 */2 * * *"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    expression=st.sampled_from(_EXPRESSIONS),
    zone=st.sampled_from([NY, LONDON, "Australia/Lord_Howe", "UTC"]),
    transition=st.sampled_from(_TRANSITIONS),
    offset_s=st.integers(min_value=-2 * 86400, max_value=2 * 86400),
    step_s=st.integers(min_value=0, max_value=3 * 86400),
)
def test_next_slot_after_is_consistent_around_transitions(
    expression: str, zone: str, transition: datetime, offset_s: int, step_s: int
) -> None:
    """Strictly after, minute-aligned UTC, and no slot hides between ``after`` and the result."""
    schedule = CronSchedule(expression, zone)
    after = transition + timedelta(seconds=offset_s, microseconds=offset_s % 7)
    slot = next_slot_after(schedule, after)
    assert slot > after
    assert slot.tzinfo is UTC
    assert (slot.second, slot.microsecond) == (0, 0)
    # Any point between after and the slot leads to the same slot: nothing in between.
    between = after + (slot - after) * (step_s / (3 * 86400))
    if between < slot:
        assert next_slot_after(schedule, between) == slot
    # Iterating on from the slot never goes backwards or repeats.
    assert next_slot_after(schedule, slot) > slot
