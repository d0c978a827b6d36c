"""The figures behind docs/cron-library.md: our wrapper over cronsim is exact on every DST case."""

from __future__ import annotations

import pytest

from shared.scheduling import iter_slots
from shared.subscription import CronSchedule

from .cron_library_comparison import CASES, Case, iterate, restart


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_wrapper_restarted_from_every_minute_matches_cronsims_iteration(case: Case) -> None:
    reference = iterate("cronsim", case)
    assert list(iter_slots(CronSchedule(case.cron, case.zone), case.start, case.end)) == reference
    stats = restart("next_slot_after", case, reference)
    assert (stats.early, stats.extra, stats.skips) == (0, 0, 0)


def test_raw_cronsim_restarted_inside_the_repeated_hour_returns_a_past_slot() -> None:
    # Why the wrapper filters "strictly after": restarted from 01:00-01:29 EST on New York's
    # autumn night, cronsim offers 01:30 EDT, which is already in the past.
    case = next(c for c in CASES if c.label.startswith("NY autumn") and c.cron == "30 1 * * *")
    assert restart("cronsim", case, iterate("cronsim", case)).early == 30
