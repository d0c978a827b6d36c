"""Task outcomes and run completion on a real PostgreSQL: the SQL against the Python rule."""

from __future__ import annotations

import functools
import random
import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.ledger.repository import Ledger, OutcomeRecorded, SourceSpec
from shared.outcomes import ExecutionRow, Report, apply_report
from tests.support.outcomes import reports

pytestmark = pytest.mark.integration

SLOT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
T0 = SLOT + timedelta(seconds=10)
LEASE = timedelta(seconds=60)
MAX_ATTEMPTS = 5


def dispatch(
    ledger: Ledger, subscription_id: str, sources: list[str], *, created: bool = True
) -> int:
    run = ledger.record_run(subscription_id, SLOT, "schedule")
    claims = ledger.claim_dispatches(
        run, [SourceSpec(s, "rss", f"task-{subscription_id}-{s}", "queue") for s in sources]
    )
    if created:
        ledger.mark_created_many([c.dispatch_id for c in claims])
    return run.id


def record(
    ledger: Ledger, subscription_id: str, source: str, report: Report
) -> OutcomeRecorded | None:
    return ledger.record_outcome(
        subscription_id,
        SLOT,
        source,
        report,
        max_attempts_for=lambda kind: MAX_ATTEMPTS,
        lease=LEASE,
    )


def report(outcome: str, attempt: int = 1, seconds: int = 0, **kw: object) -> Report:
    return Report(outcome, attempt, T0 + timedelta(seconds=seconds), **kw)  # type: ignore[arg-type]


def row(database_url: str, subscription_id: str, source: str) -> ExecutionRow:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT execution_state, execution_final, execution_attempts, outcome_key, "
            "error_key, first_started_at, finished_at, duration_ms, items, execution_error, "
            "reported_at FROM dispatches WHERE subscription_id = %s AND source_id = %s",
            (subscription_id, source),
        ).fetchone()
    assert found is not None
    return ExecutionRow(*found)


def run_row(database_url: str, run_id: int) -> tuple[object, ...]:
    with psycopg.connect(database_url) as conn:
        found = conn.execute(
            "SELECT completed_at IS NOT NULL, succeeded, completion_claimed_at IS NOT NULL, "
            "completion_published_at IS NOT NULL FROM runs WHERE id = %s",
            (run_id,),
        ).fetchone()
    assert found is not None
    return tuple(found)


def test_an_unknown_dispatch_key_records_nothing(ledger: Ledger) -> None:
    dispatch(ledger, "acme", ["rss"])
    assert record(ledger, "acme", "nope", report("succeeded")) is None
    assert record(ledger, "other", "rss", report("succeeded")) is None


def test_the_last_final_outcome_completes_the_run_and_claims_its_event(
    ledger: Ledger, database_url: str
) -> None:
    run_id = dispatch(ledger, "acme", ["a", "b"])
    first = record(ledger, "acme", "a", report("succeeded", items=3))
    assert first is not None and first.state == "succeeded" and first.final
    assert first.completion is None and not first.completion_pending
    assert run_row(database_url, run_id)[0] is False

    second = record(ledger, "acme", "b", report("skipped", error="paused"))
    assert second is not None and second.completion is not None
    event = second.completion
    assert (event.run_id, event.subscription_id, event.slot, event.reason) == (
        run_id,
        "acme",
        SLOT,
        "schedule",
    )
    assert event.succeeded is True  # skipped is not a failure
    assert vars(event.counts) == {"succeeded": 1, "failed": 0, "skipped": 1, "lost": 0}
    assert event.items == 3
    assert run_row(database_url, run_id) == (True, True, True, False)


def test_a_redelivery_while_another_holds_the_claim_is_told_to_come_back(
    ledger: Ledger, database_url: str
) -> None:
    run_id = dispatch(ledger, "acme", ["a"])
    claimed = record(ledger, "acme", "a", report("succeeded"))
    assert claimed is not None and claimed.completion is not None
    again = record(ledger, "acme", "a", report("succeeded"))
    assert again is not None and again.completion is None and again.completion_pending
    assert ledger.mark_completion_published(run_id, "msg-1")
    assert not ledger.mark_completion_published(run_id, "msg-2")
    done = record(ledger, "acme", "a", report("succeeded"))
    assert done is not None and done.completion is None and not done.completion_pending
    assert run_row(database_url, run_id) == (True, True, True, True)


def test_a_released_claim_is_taken_by_the_next_result(ledger: Ledger) -> None:
    run_id = dispatch(ledger, "acme", ["a"])
    assert (first := record(ledger, "acme", "a", report("succeeded"))) is not None
    assert first.completion is not None
    ledger.release_completion_claim(run_id)
    retry = record(ledger, "acme", "a", report("succeeded"))
    assert retry is not None and retry.completion is not None


def test_failures_until_max_attempts_complete_the_run_as_not_succeeded(
    ledger: Ledger, database_url: str
) -> None:
    dispatch(ledger, "acme", ["a"])
    for attempt in range(1, MAX_ATTEMPTS):
        got = record(ledger, "acme", "a", report("failed", attempt, attempt, error=f"e{attempt}"))
        assert got is not None and not got.final and got.completion is None
    last = record(ledger, "acme", "a", report("failed", MAX_ATTEMPTS, 99, error="gave up"))
    assert last is not None and last.final and last.completion is not None
    assert last.completion.succeeded is False
    assert vars(last.completion.counts)["failed"] == 1
    assert row(database_url, "acme", "a").error == "gave up"


def test_a_result_for_a_dispatch_fanout_never_marked_created_marks_it(
    ledger: Ledger, database_url: str
) -> None:
    dispatch(ledger, "acme", ["a"], created=False)
    assert record(ledger, "acme", "a", report("succeeded")) is not None
    with psycopg.connect(database_url) as conn:
        state = conn.execute("SELECT state, created_at IS NOT NULL FROM dispatches").fetchone()
    assert state == ("created", True)


def test_concurrent_last_results_complete_the_run_exactly_once(ledger: Ledger) -> None:
    sources = [f"s{i}" for i in range(12)]
    dispatch(ledger, "acme", sources)
    barrier = threading.Barrier(len(sources))
    outcomes: list[OutcomeRecorded | None] = []
    lock = threading.Lock()

    def finish(source: str) -> None:
        barrier.wait()
        got = record(ledger, "acme", source, report("succeeded"))
        with lock:
            outcomes.append(got)

    threads = [threading.Thread(target=finish, args=(s,)) for s in sources]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    completions = [o.completion for o in outcomes if o is not None and o.completion is not None]
    assert len(outcomes) == len(sources)
    assert len(completions) == 1


def test_lost_dispatches_complete_their_runs_and_a_late_outcome_still_wins(
    ledger: Ledger, database_url: str
) -> None:
    run_id = dispatch(ledger, "acme", ["a", "b"])
    record(ledger, "acme", "a", report("succeeded"))
    record(ledger, "acme", "b", report("started"))
    assert ledger.mark_lost(timedelta(hours=1), 100) == []  # too young
    lost = ledger.mark_lost(timedelta(0), 100)
    assert [(d.subscription_id, d.source_id) for d in lost] == [("acme", "b")]
    [completion] = ledger.complete_runs([run_id], lease=LEASE)
    assert completion.succeeded is False and vars(completion.counts)["lost"] == 1
    assert ledger.mark_lost(timedelta(0), 100) == []  # final now: not lost twice
    late = record(ledger, "acme", "b", report("succeeded", 1, 300))
    assert late is not None and late.state == "succeeded"
    # The run stays completed as it was: its event is out once.
    assert run_row(database_url, run_id)[:2] == (True, False)


def test_outcome_summary_counts_per_source_kind(ledger: Ledger) -> None:
    dispatch(ledger, "acme", ["a", "b", "c"])
    dispatch(ledger, "beta", ["a"], created=False)
    record(ledger, "acme", "a", report("succeeded"))
    record(ledger, "acme", "b", report("failed", MAX_ATTEMPTS))
    [summary] = ledger.outcome_summary(timedelta(hours=1))
    assert (summary.source_kind, summary.dispatches) == ("rss", 4)
    assert (summary.succeeded, summary.failed, summary.pending, summary.not_created) == (1, 1, 1, 1)


def test_prune_removes_runs_with_their_outcomes(ledger: Ledger, database_url: str) -> None:
    dispatch(ledger, "acme", ["a"])
    record(ledger, "acme", "a", report("succeeded"))
    counts = ledger.prune(datetime.now(UTC) + timedelta(seconds=1))
    assert (counts.runs, counts.dispatches) == (1, 1)


_case = iter(range(10**9))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(reports, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_the_sql_gives_the_python_rules_row_for_any_order_and_duplication(
    ledger: Ledger, database_url: str, batch: list[Report], rnd: random.Random
) -> None:
    subscription_id = f"case-{next(_case)}"
    dispatch(ledger, subscription_id, ["a"])
    delivered = [r for r in batch for _ in range(rnd.randint(1, 3))]
    rnd.shuffle(delivered)
    for r in delivered:
        record(ledger, subscription_id, "a", r)
    expected = functools.reduce(
        lambda acc, r: apply_report(acc, r, max_attempts=MAX_ATTEMPTS), batch, ExecutionRow()
    )
    assert row(database_url, subscription_id, "a") == expected
