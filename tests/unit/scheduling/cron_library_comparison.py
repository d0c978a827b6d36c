"""Compare cronsim and croniter on the 2026 DST transition days (New York and London).

Run ``.venv/bin/python -m tests.unit.scheduling.cron_library_comparison`` to print the tables
that ``docs/cron-library.md`` quotes. Two measurements per case:

* **iterate**: the library's own iterator, started once before the window (how its docs use it);
* **restart**: what the dispatcher actually does -- a fresh "next slot after t" for every minute
  ``t`` of the window -- for both libraries and for our wrapper
  (:func:`shared.scheduling.next_slot_after`, cronsim underneath). Counted against the reference
  list (cronsim's iterate list, equal to the hand-listed slots in ``test_scheduling_dst.py``):
  ``early`` results not strictly after ``t``, ``extra`` results that are not reference slots
  (a second run of a repeated wall-clock time), ``skips`` results that jump over a reference slot.
"""

from __future__ import annotations

import functools
import timeit
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from croniter import croniter
from cronsim import CronSim

from shared.scheduling import next_slot_after
from shared.subscription import CronSchedule

NY = "America/New_York"
LONDON = "Europe/London"


@dataclass(frozen=True)
class Case:
    """One expression in one zone over a UTC window (start exclusive, end inclusive)."""

    label: str
    zone: str
    cron: str
    start: datetime
    end: datetime


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


CASES: tuple[Case, ...] = (
    Case("NY spring 2026-03-08, daily 02:30 (in the gap)", NY, "30 2 * * *",
         _utc("2026-03-07 00:00"), _utc("2026-03-10 00:00")),
    Case("NY spring 2026-03-08, */15", NY, "*/15 * * * *",
         _utc("2026-03-08 06:15"), _utc("2026-03-08 07:30")),
    Case("NY autumn 2026-11-01, daily 02:30", NY, "30 2 * * *",
         _utc("2026-10-31 00:00"), _utc("2026-11-03 00:00")),
    Case("NY autumn 2026-11-01, daily 01:30 (repeated)", NY, "30 1 * * *",
         _utc("2026-10-31 00:00"), _utc("2026-11-03 00:00")),
    Case("NY autumn 2026-11-01, */15", NY, "*/15 * * * *",
         _utc("2026-11-01 04:45"), _utc("2026-11-01 07:15")),
    Case("London spring 2026-03-29, daily 02:30", LONDON, "30 2 * * *",
         _utc("2026-03-28 00:00"), _utc("2026-03-31 00:00")),
    Case("London spring 2026-03-29, daily 01:30 (in the gap)", LONDON, "30 1 * * *",
         _utc("2026-03-28 00:00"), _utc("2026-03-31 00:00")),
    Case("London spring 2026-03-29, */15", LONDON, "*/15 * * * *",
         _utc("2026-03-29 00:15"), _utc("2026-03-29 01:30")),
    Case("London autumn 2026-10-25, daily 02:30", LONDON, "30 2 * * *",
         _utc("2026-10-24 00:00"), _utc("2026-10-27 00:00")),
    Case("London autumn 2026-10-25, daily 01:30 (repeated)", LONDON, "30 1 * * *",
         _utc("2026-10-24 00:00"), _utc("2026-10-27 00:00")),
    Case("London autumn 2026-10-25, */15", LONDON, "*/15 * * * *",
         _utc("2026-10-24 23:45"), _utc("2026-10-25 02:15")),
)  # fmt: skip

NextFn = Callable[[str, datetime], datetime]


def cronsim_next(expr: str, after_local: datetime) -> datetime:
    """cronsim's first result after ``after_local`` (an aware local datetime), in UTC."""
    return next(iter(CronSim(expr, after_local))).astimezone(UTC)


def croniter_next(expr: str, after_local: datetime) -> datetime:
    """croniter's first result after ``after_local`` (an aware local datetime), in UTC."""
    result = croniter(expr, after_local).get_next(datetime)
    assert isinstance(result, datetime)
    return result.astimezone(UTC)


def wrapper_next(expr: str, after_local: datetime) -> datetime:
    """shared.scheduling.next_slot_after, for the same inputs."""
    zone = after_local.tzinfo
    assert isinstance(zone, ZoneInfo)
    return next_slot_after(CronSchedule(expr, zone.key), after_local)


LIBRARIES: dict[str, NextFn] = {"cronsim": cronsim_next, "croniter": croniter_next}
RESTARTED: dict[str, NextFn] = {**LIBRARIES, "next_slot_after": wrapper_next}


def iterate(library: str, case: Case) -> list[datetime]:
    """The library's own iterator from ``case.start`` up to ``case.end`` (UTC results)."""
    zone = ZoneInfo(case.zone)
    start = case.start.astimezone(zone)
    results: Iterator[datetime]
    if library == "cronsim":
        results = (dt.astimezone(UTC) for dt in CronSim(case.cron, start))
    else:
        it = croniter(case.cron, start)
        results = (it.get_next(datetime).astimezone(UTC) for _ in range(10_000))
    out: list[datetime] = []
    for slot in results:
        if slot > case.end:
            break
        out.append(slot)
    return out


@dataclass(frozen=True)
class RestartStats:
    """Fresh next-after-t calls for every minute t of the window, checked against ``listed``."""

    early: int
    extra: int
    skips: int


def restart(library: str, case: Case, listed: list[datetime]) -> RestartStats:
    """Call the library afresh from every minute of the window (as a dispatcher does)."""
    zone = ZoneInfo(case.zone)
    next_fn = RESTARTED[library]
    early = skips = 0
    extra: set[datetime] = set()
    t = case.start
    while t < listed[-1]:
        got = next_fn(case.cron, t.astimezone(zone))
        want = next(s for s in listed if s > t)
        early += got <= t
        skips += got > want
        if got not in listed:
            extra.add(got)
        t += timedelta(minutes=1)
    return RestartStats(early, len(extra), skips)


def fmt(slot: datetime, zone: str) -> str:
    """'07:00Z (03:00 EDT)' for a table cell."""
    local = slot.astimezone(ZoneInfo(zone))
    return f"{slot:%m-%d %H:%M}Z ({local:%H:%M} {local.tzname()})"


def report(*, timings: bool = True) -> str:
    """The markdown tables for docs/cron-library.md (``timings=False``: skip the slow timing)."""
    lines = [
        "| case | cronsim (iterate) | croniter (iterate) |",
        "| --- | --- | --- |",
    ]
    restart_lines = [
        "| case | " + " | ".join(RESTARTED) + " |",
        "| --- |" + " --- |" * len(RESTARTED),
    ]
    for case in CASES:
        reference = iterate("cronsim", case)
        cells = ["<br>".join(fmt(s, case.zone) for s in iterate(lib, case)) for lib in LIBRARIES]
        stats = [restart(name, case, reference) for name in RESTARTED]
        lines.append(f"| {case.label} `{case.cron}` | {' | '.join(cells)} |")
        counts = [f"{r.early} / {r.extra} / {r.skips}" for r in stats]
        restart_lines.append(f"| {case.label} `{case.cron}` | {' | '.join(counts)} |")
    tail = ["", *timing_lines()] if timings else []
    return "\n".join([*lines, "", *restart_lines, "", *odd_zone_lines(), *tail])


# Transitions that are not a one-hour step at a whole hour. Each start lies in the repeated
# period (second pass); the right answer is the first slot strictly after it.
ODD_ZONES: tuple[tuple[str, str, datetime], ...] = (
    ("Pacific/Chatham", "* 3 * * *", _utc("2026-04-04 14:00")),  # 02:45 +1245, 2nd pass
    ("Australia/Lord_Howe", "*/15 * * * *", _utc("2026-04-04 15:05")),  # 01:35 +1030, 2nd pass
    ("Australia/Lord_Howe", "* */2 * * *", _utc("2026-04-04 15:10")),
)


def odd_zone_lines() -> list[str]:
    """First result of a fresh call from inside an odd repeated period, per library."""
    lines = ["| zone, cron, after | " + " | ".join(RESTARTED) + " |",
             "| --- |" + " --- |" * len(RESTARTED)]  # fmt: skip
    for zone, expr, after in ODD_ZONES:
        local = after.astimezone(ZoneInfo(zone))
        cells = []
        for fn in RESTARTED.values():
            got = fn(expr, local)
            mark = " (before *after*)" if got <= after else ""
            cells.append(fmt(got, zone) + mark)
        lines.append(f"| {zone} `{expr}` after {fmt(after, zone)} | {' | '.join(cells)} |")
    return lines


def timing_lines(calls: int = 2000) -> list[str]:
    """Microseconds per fresh "next after t" call, best of 3 runs of ``calls`` calls."""
    after = datetime(2026, 5, 4, 10, 7, 13, tzinfo=UTC).astimezone(ZoneInfo(LONDON))
    lines = ["| expression (Europe/London) | " + " | ".join(RESTARTED) + " |",
             "| --- |" + " --- |" * len(RESTARTED)]  # fmt: skip
    for expr in ("0 9 * * 1-5", "*/15 * * * *", "30 2 * * *"):
        cells = []
        for fn in RESTARTED.values():
            call = functools.partial(fn, expr, after)
            best = min(timeit.repeat(call, number=calls, repeat=3))
            cells.append(f"{best / calls * 1e6:.0f} µs")
        lines.append(f"| `{expr}` | {' | '.join(cells)} |")
    return lines


if __name__ == "__main__":
    print(report())
