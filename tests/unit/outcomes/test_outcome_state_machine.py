"""The outcome state machine: outcomes only move forward, whatever the order and duplication."""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.outcomes import (
    LOST_KEY,
    ExecutionRow,
    Report,
    apply_report,
    is_final,
    precedence_key,
    transition,
)
from tests.support.outcomes import reports

T0 = datetime(2026, 1, 5, 9, 0, 10, tzinfo=UTC)
MAX_ATTEMPTS = 5


def report(outcome: str, attempt: int = 1, seconds: int = 0, **kw: object) -> Report:
    return Report(outcome, attempt, T0 + timedelta(seconds=seconds), **kw)  # type: ignore[arg-type]


def fold(reports: list[Report], max_attempts: int = MAX_ATTEMPTS) -> ExecutionRow:
    return functools.reduce(
        lambda row, r: apply_report(row, r, max_attempts=max_attempts), reports, ExecutionRow()
    )


def test_started_never_overwrites_succeeded() -> None:
    row = fold([report("succeeded", 1, 5, items=3), report("started", 1, 0)])
    assert (row.state, row.final, row.items) == ("succeeded", True, 3)


def test_a_later_failed_attempt_after_success_counts_as_an_attempt_but_does_not_undo_it() -> None:
    row = fold([report("succeeded", 1, 5), report("failed", 2, 60, error="timeout")])
    assert (row.state, row.final, row.attempts) == ("succeeded", True, 2)
    assert row.error == "timeout"  # the failure is kept as the last error, for humans


def test_fails_twice_then_succeeds() -> None:
    row = fold(
        [
            report("failed", 1, 1, error="503 one"),
            report("failed", 2, 10, error="503 two"),
            report("succeeded", 3, 30, items=7, duration_ms=2000),
        ]
    )
    assert (row.state, row.final, row.attempts, row.items) == ("succeeded", True, 3, 7)
    assert row.error == "503 two"
    assert row.finished_at == T0 + timedelta(seconds=30)


def test_a_retry_that_started_replaces_the_previous_failure_but_not_the_reverse() -> None:
    assert fold([report("failed", 2, 10), report("started", 3, 20)]).state == "started"
    assert fold([report("started", 2, 5), report("failed", 2, 10)]).state == "failed"
    assert fold([report("failed", 2, 10), report("started", 2, 5)]).state == "failed"


def test_failure_is_final_at_max_attempts_or_when_the_collector_says_so() -> None:
    assert not is_final("failed", 4, final=False, max_attempts=5)
    assert is_final("failed", 5, final=False, max_attempts=5)
    assert is_final("failed", 1, final=True, max_attempts=5)
    assert not is_final("failed", 1000, final=False, max_attempts=-1)  # unlimited queue
    assert not is_final("started", 5, final=True, max_attempts=5)
    assert is_final("skipped", 1, final=False, max_attempts=5)


def test_lost_sits_between_running_and_final() -> None:
    running = precedence_key("started", 99, final=False)
    retrying = precedence_key("failed", 99, final=False)
    final_failure = precedence_key("failed", 1, final=True)
    assert running < LOST_KEY and retrying < LOST_KEY < final_failure
    assert precedence_key("succeeded", 1, final=True) > LOST_KEY


def test_final_outcomes_rank_succeeded_over_skipped_over_failed_whatever_the_attempt() -> None:
    succeeded = precedence_key("succeeded", 1, final=True)
    skipped = precedence_key("skipped", 9, final=True)
    failed = precedence_key("failed", 99, final=True)
    assert failed < skipped < succeeded


def test_attempt_numbers_compare_numerically_not_as_text() -> None:
    assert precedence_key("started", 9, final=False) < precedence_key("started", 10, final=False)


def test_duplicates_are_no_ops() -> None:
    one = report("succeeded", 2, 5, items=1, duration_ms=40)
    assert fold([one]) == fold([one, one, one])


def test_transition_of_a_success_carries_no_error_key() -> None:
    assert transition(report("succeeded"), max_attempts=5).error_key is None
    assert transition(report("failed"), max_attempts=5).error_key is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(reports, min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_any_order_and_any_duplication_give_the_same_row(
    batch: list[Report], rnd: random.Random
) -> None:
    expected = fold(batch)
    delivered = [r for r in batch for _ in range(rnd.randint(1, 3))]
    rnd.shuffle(delivered)
    assert fold(delivered) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(reports, min_size=1, max_size=8))
def test_a_final_row_never_becomes_unfinal_and_attempts_never_shrink(
    batch: list[Report],
) -> None:
    row = ExecutionRow()
    for r in batch:
        after = apply_report(row, r, max_attempts=MAX_ATTEMPTS)
        assert after.attempts >= row.attempts
        if row.final:
            assert after.final
        if row.state == "succeeded":
            assert after.state == "succeeded"
        row = after
