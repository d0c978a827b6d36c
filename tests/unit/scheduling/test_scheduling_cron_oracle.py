"""next_slot_after against a brute-force oracle of the documented DST rules, in many zones.

The oracle shares no code with the implementation: it scans every UTC minute (interval
schedules) or every local day's wall-clock times (fixed-time schedules) and applies the rules of
``shared/scheduling/slots.py`` literally. Zones include 30-minute shifts (Australia/Lord_Howe),
transitions at 02:45 (Pacific/Chatham), at midnight (America/Santiago, America/Havana) and a
2-hour shift (Antarctica/Troll), around every 2026 transition of each zone.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.scheduling import iter_slots
from shared.subscription import CronSchedule

ZONES = (
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/Santiago",
    "America/Havana",
    "Antarctica/Troll",
    "America/St_Johns",
)


@functools.cache
def transitions_2026(zone: str) -> tuple[datetime, ...]:
    """Instants (to the half hour) where the zone's UTC offset changes during 2026."""
    tz = ZoneInfo(zone)
    t = datetime(2026, 1, 1, tzinfo=UTC)
    previous = t.astimezone(tz).utcoffset()
    found = []
    while t.year == 2026:
        t += timedelta(minutes=15)
        offset = t.astimezone(tz).utcoffset()
        if offset != previous:
            found.append(t)
            previous = offset
    return tuple(found)


def expand(field: str, low: int, high: int) -> set[int]:
    """The values of one cron field (the subset of syntax the strategy below produces)."""
    values: set[int] = set()
    for term in field.split(","):
        part, _, step_text = term.partition("/")
        step = int(step_text) if step_text else 1
        if part == "*":
            first, last = low, high
        elif "-" in part:
            first, last = (int(x) for x in part.split("-"))
        else:
            first = int(part)
            last = high if step > 1 else first
        values.update(range(first, last + 1, step))
    return values


def oracle(expression: str, zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Slots in ``(start, end]`` by the documented rules, brute force."""
    tz = ZoneInfo(zone)
    minute_field, hour_field = expression.split()[:2]
    minutes, hours = expand(minute_field, 0, 59), expand(hour_field, 0, 23)
    found: set[datetime] = set()
    if minute_field.startswith("*") or hour_field.startswith("*"):
        # Interval: every UTC minute whose local wall time matches.
        t = start.replace(second=0, microsecond=0) + timedelta(minutes=1)
        while t <= end:
            local = t.astimezone(tz)
            if local.minute in minutes and local.hour in hours:
                found.add(t)
            t += timedelta(minutes=1)
    else:
        # Fixed time: each wall time once, at its first occurrence; if it does not exist, at the
        # first wall minute after it that does.
        day = (start.astimezone(tz) - timedelta(days=1)).date()
        while day <= (end.astimezone(tz) + timedelta(days=1)).date():
            for hour in hours:
                for minute in minutes:
                    wall = datetime.combine(day, time(hour, minute))
                    while True:
                        instant = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
                        if instant.astimezone(tz).replace(tzinfo=None) == wall:
                            break
                        wall += timedelta(minutes=1)
                    if start < instant <= end:
                        found.add(instant)
            day += timedelta(days=1)
    return sorted(found)


FOCUS_MINUTES = [0, 1, 15, 29, 30, 31, 44, 45, 46, 59]
FOCUS_HOURS = [0, 1, 2, 3, 4, 22, 23]


def field(values: list[int], high: int) -> st.SearchStrategy[str]:
    single = st.sampled_from(values)
    return st.one_of(
        st.just("*"),
        st.sampled_from([2, 5, 7, 15, 20, 30]).map(lambda k: f"*/{k}"),
        single.map(str),
        st.lists(single, min_size=2, max_size=3, unique=True).map(
            lambda xs: ",".join(str(x) for x in sorted(xs))
        ),
        st.tuples(single, st.integers(1, 3)).map(lambda p: f"{p[0]}-{min(high, p[0] + p[1])}"),
        st.tuples(single, st.integers(2, 3)).map(lambda p: f"{p[0]}-{high}/{p[1]}"),
    )


@settings(max_examples=120, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    which=st.integers(min_value=0, max_value=10),
    minute=field(FOCUS_MINUTES, 59),
    hour=field(FOCUS_HOURS, 23),
    shift_minutes=st.integers(min_value=-600, max_value=600),
)
def test_slots_match_the_brute_force_oracle(
    zone: str, which: int, minute: str, hour: str, shift_minutes: int
) -> None:
    expression = f"{minute} {hour} * * *"
    transitions = transitions_2026(zone)
    centre = transitions[which % len(transitions)] + timedelta(minutes=shift_minutes)
    start, end = centre - timedelta(hours=26), centre + timedelta(hours=26)
    got = list(iter_slots(CronSchedule(expression, zone), start, end))
    assert got == oracle(expression, zone, start, end)


def test_the_oracle_sees_the_chatham_repeat() -> None:
    # Pacific/Chatham falls back at 03:45 +13:45 -> 02:45 +12:45 on 2026-04-05 (14:00 UTC):
    # an every-minute job in hour 3 runs 03:00-03:44 twice and 03:45-03:59 once.
    start = datetime(2026, 4, 4, 13, 0, tzinfo=UTC)
    end = datetime(2026, 4, 4, 15, 30, tzinfo=UTC)
    slots = oracle("* 3 * * *", "Pacific/Chatham", start, end)
    assert len(slots) == 45 + 60
    assert list(iter_slots(CronSchedule("* 3 * * *", "Pacific/Chatham"), start, end)) == slots
