"""fanout's two ledger round trips: ``start_run`` (run + claims in one statement) and
``mark_dispatches`` (every create's outcome in one statement), on a real PostgreSQL, including
concurrent duplicate claimers and the races the one-statement form must get right."""

from __future__ import annotations

import random
import threading
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus

from shared.ledger.repository import (
    MAX_ERROR_CHARS,
    Ledger,
    LedgerError,
    RunClaims,
    SourceSpec,
    pooled_transaction,
)
from tests.support.polling import wait_for

from .test_ledger_repository import SLOT, _count, _in_threads, _spec

pytestmark = pytest.mark.integration


def test_start_run_records_and_claims_then_finds_both(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    first = ledger.start_run("acme", SLOT, "schedule", [_spec("b"), _spec("a")], "msg-1")
    assert first.run.recorded and first.run.reason == "schedule"
    assert [c.source_id for c in first.claims] == ["b", "a"]  # the order given
    assert all(
        c.claimed and c.state == "claimed" and c.run_id == first.run.id for c in first.claims
    )

    again = ledger.start_run("acme", SLOT, "replay", [_spec("a"), _spec("b"), _spec("c")], "m2")
    assert not again.run.recorded and again.run.id == first.run.id
    assert again.run.reason == "schedule"  # the first writer's row stands
    assert [(c.source_id, c.claimed) for c in again.claims] == [
        ("a", False),
        ("b", False),
        ("c", True),
    ]
    assert {c.dispatch_id for c in again.claims[:2]} == {c.dispatch_id for c in first.claims}
    assert _count(sql_conn, "SELECT count(*) FROM runs") == 1
    assert _count(sql_conn, "SELECT count(*) FROM dispatches") == 3
    assert _count(sql_conn, "SELECT count(*) FROM runs WHERE source_message_id = 'msg-1'") == 1


def test_start_run_agrees_with_record_run_and_claim_dispatches(ledger: Ledger) -> None:
    run = ledger.record_run("acme", SLOT, "catch-up")
    [old] = ledger.claim_dispatches(run, [_spec("a")])
    started = ledger.start_run("acme", SLOT, "schedule", [_spec("a"), _spec("b")])
    assert started.run == run.__class__(run.id, "acme", SLOT, "catch-up", recorded=False)
    assert started.claims[0] == old.__class__(**{**vars(old), "claimed": False})
    assert started.claims[1].claimed


def test_start_run_refuses_what_record_run_and_claims_refuse(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="reason"):
        ledger.start_run("acme", SLOT, "because", [_spec("a")])
    with pytest.raises(LedgerError, match="duplicate"):
        ledger.start_run("acme", SLOT, "schedule", [_spec("a"), _spec("a")])
    with pytest.raises(LedgerError, match="timezone-aware"):
        ledger.start_run("acme", SLOT.replace(tzinfo=None), "schedule", [_spec("a")])


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_duplicate_claimers_record_once_and_claim_each_key_once(
    round_: int, ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    """Twenty fanout instances handling copies of one due message at the same instant."""
    ids = [f"src-{n:02d}" for n in range(6)]
    slot = SLOT + timedelta(minutes=round_)

    def start(i: int) -> RunClaims:
        order = ids[:]
        random.Random(i * 7 + round_).shuffle(order)
        return ledger.start_run("acme", slot, "schedule", [_spec(s) for s in order], f"m{i}")

    results = _in_threads(20, start)
    assert sum(r.run.recorded for r in results) == 1
    assert len({r.run.id for r in results}) == 1
    winners: dict[str, int] = {}
    for result in results:
        assert sorted(c.source_id for c in result.claims) == ids
        for claim in result.claims:
            winners[claim.source_id] = winners.get(claim.source_id, 0) + claim.claimed
    assert winners == dict.fromkeys(ids, 1)
    assert _count(sql_conn, "SELECT count(*) FROM runs") == 1
    assert _count(sql_conn, "SELECT count(*) FROM dispatches") == len(ids)


def _blocked_start(
    ledger: Ledger, sources: list[str], database_url: str
) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(ledger.start_run("acme", SLOT, "schedule", [_spec(s) for s in sources]))
        except BaseException as exc:  # reported by the test
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    # start_run must be waiting on the other transaction's uncommitted index entry before that
    # one commits: poll PostgreSQL for a backend waiting on a lock.
    with psycopg.connect(database_url, autocommit=True) as probe:
        wait_for(
            lambda: (
                probe.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                ).fetchone()
                == (1,)
            ),
            timeout=10,
            message="start_run waiting on the other transaction",
        )
    return thread, out


def test_a_run_committed_after_the_statement_snapshot_is_found_not_duplicated(
    ledger: Ledger, database_url: str, sql_conn: psycopg.Connection[Any]
) -> None:
    """The statement waits on a concurrent, uncommitted insert of the same run; once that
    commits, the run is in neither the insert's result nor the statement's snapshot, so
    start_run reads it again rather than losing it."""
    with psycopg.connect(database_url) as other:
        other.execute(
            "INSERT INTO runs (subscription_id, slot, reason) VALUES ('acme', %s, 'catch-up')",
            (SLOT,),
        )
        thread, out = _blocked_start(ledger, ["a", "b"], database_url)
        assert thread.is_alive()
        other.commit()
    thread.join(timeout=30)
    [started] = out
    assert isinstance(started, RunClaims)
    assert not started.run.recorded and started.run.reason == "catch-up"
    assert [c.claimed for c in started.claims] == [True, True]
    assert _count(sql_conn, "SELECT count(*) FROM runs") == 1


def test_a_key_committed_after_the_statement_snapshot_belongs_to_the_other_claimer(
    ledger: Ledger, database_url: str, sql_conn: psycopg.Connection[Any]
) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    with psycopg.connect(database_url) as other:
        other.execute(
            "INSERT INTO dispatches (run_id, subscription_id, slot, source_id, source_kind, "
            "task_name, queue) VALUES (%s, 'acme', %s, 'a', 'rss', 'task-a', 'collect-rss')",
            (run.id, SLOT),
        )
        thread, out = _blocked_start(ledger, ["a", "b"], database_url)
        assert thread.is_alive()
        other.commit()
    thread.join(timeout=30)
    [started] = out
    assert isinstance(started, RunClaims)
    assert [(c.source_id, c.claimed, c.state) for c in started.claims] == [
        ("a", False, "claimed"),
        ("b", True, "claimed"),
    ]
    assert _count(sql_conn, "SELECT count(*) FROM dispatches") == 2


def test_mark_dispatches_marks_created_and_failed_in_one_statement(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    started = ledger.start_run("acme", SLOT, "schedule", [_spec(s) for s in "abcd"])
    a, b, c, d = (claim.dispatch_id for claim in started.claims)
    assert ledger.mark_dispatches([a], [(b, "boom"), (c, "x" * (MAX_ERROR_CHARS + 50))]) == (1, 2)
    rows = {
        r[0]: r[1:]
        for r in sql_conn.execute(
            "SELECT source_id, state, attempts, last_error, created_at IS NOT NULL FROM dispatches"
        ).fetchall()
    }
    assert rows["a"] == ("created", 0, None, True)
    assert rows["b"] == ("failed", 1, "boom", False)
    assert rows["c"][:2] == ("failed", 1) and len(rows["c"][2]) == MAX_ERROR_CHARS
    assert rows["d"] == ("claimed", 0, None, False)
    # A created row is never downgraded nor re-marked; a failed one is created by a retry and
    # keeps the error it had for the record.
    assert ledger.mark_dispatches([b], [(a, "late failure")]) == (1, 0)
    assert sql_conn.execute(
        "SELECT state, attempts, last_error FROM dispatches WHERE id = %s", (a,)
    ).fetchone() == ("created", 0, None)
    assert sql_conn.execute(
        "SELECT state, attempts FROM dispatches WHERE id = %s", (b,)
    ).fetchone() == ("created", 1)
    assert ledger.mark_dispatches([], []) == (0, 0)
    assert ledger.mark_dispatches([d]) == (1, 0)


def test_text_reaches_the_rows_unchanged_through_the_json_parameter(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    """start_run and mark_dispatches pass their rows as one JSON text: quotes, backslashes,
    JSON-looking text, control characters and non-ASCII come out as they went in."""
    awkward = ['quo"te', "back\\slash", '{"a": [1]}', "null", "tab\tnew\nline", "café ☕ 𝄞"]
    specs = [
        SourceSpec(f"src-{text}", f"kind {text}", f"task {text}", f"queue {text}")
        for text in awkward
    ]
    started = ledger.start_run("acme", SLOT, "schedule", specs)
    assert [(c.source_id, c.source_kind, c.task_name, c.queue) for c in started.claims] == [
        (s.source_id, s.source_kind, s.task_name, s.queue) for s in specs
    ]
    ids = [c.dispatch_id for c in started.claims]
    assert ledger.mark_dispatches([], list(zip(ids, awkward, strict=True))) == (0, len(ids))
    stored = dict(sql_conn.execute("SELECT id, last_error FROM dispatches").fetchall())
    assert [stored[i] for i in ids] == awkward


def test_pooled_connections_stay_in_autocommit_and_other_calls_open_a_transaction(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    """start_run and mark_dispatches skip BEGIN / COMMIT without switching the connection's
    mode; every other call runs in a transaction of its own, which it never leaves open."""
    started = ledger.start_run("acme", SLOT, "schedule", [_spec("a")])
    ledger.mark_dispatches([started.claims[0].dispatch_id])
    with pytest.raises(LedgerError):
        ledger.start_run("acme", SLOT, "schedule", [_spec("a"), _spec("a")])
    ledger.record_run("acme", SLOT + timedelta(hours=1), "schedule")
    for _ in range(ledger.pool.max_size):
        with ledger.pool.connection() as conn:
            assert conn.autocommit is True
            assert conn.info.transaction_status is TransactionStatus.IDLE

    with pooled_transaction(ledger.pool) as conn:
        assert conn.info.transaction_status is TransactionStatus.INTRANS
        conn.execute("DELETE FROM dispatches")
    assert _count(sql_conn, "SELECT count(*) FROM dispatches") == 0
    with pytest.raises(ZeroDivisionError), pooled_transaction(ledger.pool) as conn:
        conn.execute("DELETE FROM runs")
        _ = 1 / 0
    assert _count(sql_conn, "SELECT count(*) FROM runs") == 2  # rolled back
