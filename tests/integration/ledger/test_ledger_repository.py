"""The ledger repository against a real PostgreSQL: claims under concurrency, the dispatch
lifecycle, CLI and maintenance queries, pruning and the subscription mirror."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

from shared.ledger.repository import (
    Claim,
    Ledger,
    LedgerError,
    MirrorDoc,
    RunRef,
    SourceSpec,
)

pytestmark = pytest.mark.integration

T = TypeVar("T")
SLOT = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)


def _in_threads(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``count`` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    results: list[T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        try:
            result = work(i)
        except BaseException as exc:
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    assert len(results) == count
    return results


def _spec(source_id: str) -> SourceSpec:
    return SourceSpec(source_id, "rss", f"task-{source_id}", "collect-rss")


def _count(conn: psycopg.Connection[Any], query: str, *params: object) -> int:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return int(row[0])


# -- runs ------------------------------------------------------------------------------------


def test_record_run_inserts_once_and_then_finds_it(ledger: Ledger) -> None:
    first = ledger.record_run("acme", SLOT, "schedule", "msg-1")
    again = ledger.record_run("acme", SLOT, "replay", "msg-2")
    assert first.recorded and not again.recorded
    assert again.id == first.id
    assert again.reason == "schedule"  # the first writer's row stands
    other = ledger.record_run("acme", SLOT + timedelta(minutes=1), "schedule")
    assert other.id != first.id and other.recorded


def test_record_run_refuses_bad_reason_and_naive_slot(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="reason"):
        ledger.record_run("acme", SLOT, "because")
    with pytest.raises(LedgerError, match="timezone-aware"):
        ledger.record_run("acme", datetime(2026, 3, 8, 7, 0), "schedule")


def test_concurrent_record_run_records_exactly_once(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    refs = _in_threads(20, lambda i: ledger.record_run("acme", SLOT, "schedule", f"m{i}"))
    assert sum(ref.recorded for ref in refs) == 1
    assert len({ref.id for ref in refs}) == 1
    assert _count(sql_conn, "SELECT count(*) FROM runs") == 1


# -- claims ----------------------------------------------------------------------------------


def test_twenty_threads_claiming_one_key_give_exactly_one_claimer(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    claims = _in_threads(
        20, lambda i: ledger.claim_dispatch(run, "feed-1", "rss", "task-feed-1", "collect-rss")
    )
    assert sum(claim.claimed for claim in claims) == 1
    assert len({claim.dispatch_id for claim in claims}) == 1
    assert _count(sql_conn, "SELECT count(*) FROM dispatches") == 1


def test_concurrent_batches_in_any_order_claim_each_key_once(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    ids = [f"src-{n:02d}" for n in range(40)]

    def claim_shuffled(i: int) -> list[Claim]:
        order = ids[:]
        random.Random(i).shuffle(order)
        return ledger.claim_dispatches(run, [_spec(s) for s in order])

    # Exactly once per key whatever the order. It also guards the sorted insert order, though
    # only probabilistically: unsorted, overlapping batches deadlock now and then, not always.
    batches = _in_threads(10, claim_shuffled)
    winners: dict[str, int] = {}
    for batch in batches:
        for claim in batch:
            winners[claim.source_id] = winners.get(claim.source_id, 0) + claim.claimed
    assert winners == dict.fromkeys(ids, 1)
    assert _count(sql_conn, "SELECT count(*) FROM dispatches") == len(ids)


def test_batch_claim_keeps_input_order_and_reports_existing_state(ledger: Ledger) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    first = ledger.claim_dispatches(run, [_spec("c"), _spec("a"), _spec("b")])
    assert [c.source_id for c in first] == ["c", "a", "b"]
    assert all(c.claimed and c.state == "claimed" and c.must_create for c in first)
    assert {c.task_name for c in first} == {"task-a", "task-b", "task-c"}

    by_id = {c.source_id: c for c in first}
    ledger.mark_created(by_id["a"].dispatch_id)
    ledger.mark_failed(by_id["b"].dispatch_id, "UNAVAILABLE")

    # A duplicate due message: nothing is claimed again; "a" is done, "b" and "c" must be
    # (re)created under their stored names; "d" is new.
    second = ledger.claim_dispatches(run, [_spec("a"), _spec("b"), _spec("c"), _spec("d")])
    summary = [(c.source_id, c.claimed, c.state, c.must_create) for c in second]
    assert summary == [
        ("a", False, "created", False),
        ("b", False, "failed", True),
        ("c", False, "claimed", True),
        ("d", True, "claimed", True),
    ]
    assert second[1].attempts == 1
    assert [c.dispatch_id for c in second[:3]] == [by_id[s].dispatch_id for s in "abc"]


def test_claim_keeps_the_first_task_name(ledger: Ledger) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    ledger.claim_dispatch(run, "feed", "rss", "name-from-first-attempt", "q1")
    again = ledger.claim_dispatch(run, "feed", "rss", "some-other-name", "q2")
    assert (again.task_name, again.queue, again.claimed) == ("name-from-first-attempt", "q1", False)


def test_batch_claim_refuses_duplicate_sources(ledger: Ledger) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    with pytest.raises(LedgerError, match="duplicate source ids"):
        ledger.claim_dispatches(run, [_spec("a"), _spec("a")])
    assert ledger.claim_dispatches(run, []) == []


def test_claim_for_unknown_run_is_refused(ledger: Ledger) -> None:
    ghost = RunRef(id=999_999, subscription_id="acme", slot=SLOT, reason="manual", recorded=True)
    with pytest.raises(psycopg.errors.ForeignKeyViolation):
        ledger.claim_dispatch(ghost, "feed", "rss", "t", "q")


# -- lifecycle -------------------------------------------------------------------------------


def test_dispatch_lifecycle_claimed_failed_created(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    claim = ledger.claim_dispatch(run, "feed", "rss", "task-feed", "collect-rss")

    assert ledger.mark_failed(claim.dispatch_id, "DEADLINE_EXCEEDED " + "x" * 5000)
    assert ledger.mark_failed(claim.dispatch_id, "UNAVAILABLE")
    [row] = ledger.dispatches_for("acme")
    assert (row.state, row.attempts, row.last_error, row.created_at) == (
        "failed",
        2,
        "UNAVAILABLE",
        None,
    )

    assert ledger.mark_created(claim.dispatch_id)
    assert not ledger.mark_created(claim.dispatch_id)  # idempotent, keeps the first time
    # A late failure report from a duplicate attempt must not undo "created".
    assert not ledger.mark_failed(claim.dispatch_id, "ALREADY_EXISTS mishandled")
    [row] = ledger.dispatches_for("acme")
    assert row.state == "created" and row.attempts == 2 and row.created_at is not None
    assert row.claimed_at <= row.created_at <= row.updated_at

    long_error = _count(
        sql_conn, "SELECT max(length(last_error)) FROM dispatches WHERE id = %s", claim.dispatch_id
    )
    assert long_error <= 2000


def test_mark_created_many_counts_changes(ledger: Ledger) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    claims = ledger.claim_dispatches(run, [_spec(s) for s in "abc"])
    ledger.mark_created(claims[0].dispatch_id)
    assert ledger.mark_created_many([c.dispatch_id for c in claims]) == 2
    assert ledger.mark_created_many([]) == 0


def test_run_reasons_maps_each_existing_run_to_its_reason(ledger: Ledger) -> None:
    scheduled = ledger.record_run("acme", SLOT, "schedule")
    replayed = ledger.record_run("acme", SLOT + timedelta(minutes=1), "replay")

    reasons = ledger.run_reasons([scheduled.id, replayed.id, 999_999])

    assert reasons == {scheduled.id: "schedule", replayed.id: "replay"}
    assert ledger.run_reasons([]) == {}


# -- queries ---------------------------------------------------------------------------------


def test_runs_for_lists_newest_first_with_counts(ledger: Ledger) -> None:
    runs = [ledger.record_run("acme", SLOT + timedelta(minutes=m), "schedule") for m in range(5)]
    ledger.record_run("other", SLOT, "schedule")
    claims = ledger.claim_dispatches(runs[-1], [_spec(s) for s in "abc"])
    ledger.mark_created(claims[0].dispatch_id)
    ledger.mark_failed(claims[1].dispatch_id, "boom")

    listed = ledger.runs_for("acme", limit=3)
    assert [r.slot for r in listed] == [SLOT + timedelta(minutes=m) for m in (4, 3, 2)]
    newest = listed[0]
    assert (newest.dispatches, newest.created, newest.claimed, newest.failed) == (3, 1, 1, 1)
    assert newest.latest_error == "boom"
    assert (listed[1].dispatches, listed[1].latest_error) == (0, None)
    assert newest.slot.utcoffset() == timedelta(0)


def test_dispatches_for_filters_by_slot(ledger: Ledger) -> None:
    for minute in range(3):
        run = ledger.record_run("acme", SLOT + timedelta(minutes=minute), "schedule")
        ledger.claim_dispatches(run, [_spec("b"), _spec("a")])
    other = ledger.record_run("other", SLOT, "schedule")
    ledger.claim_dispatch(other, "a", "rss", "t", "q")

    everything = ledger.dispatches_for("acme")
    assert [(d.slot.minute, d.source_id) for d in everything] == [
        (2, "a"),
        (2, "b"),
        (1, "a"),
        (1, "b"),
        (0, "a"),
        (0, "b"),
    ]
    one_slot = ledger.dispatches_for("acme", slot=SLOT + timedelta(minutes=1))
    assert {(d.slot, d.source_id) for d in one_slot} == {
        (SLOT + timedelta(minutes=1), "a"),
        (SLOT + timedelta(minutes=1), "b"),
    }
    assert len(ledger.dispatches_for("acme", limit=4)) == 4


def test_stuck_dispatches_are_old_claimed_or_failed_ones(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    run = ledger.record_run("acme", SLOT, "schedule")
    claims = {c.source_id: c for c in ledger.claim_dispatches(run, [_spec(s) for s in "abcde"])}
    ledger.mark_failed(claims["b"].dispatch_id, "boom")
    ledger.mark_created(claims["c"].dispatch_id)
    # a: claimed 2 h ago; b: failed 3 h ago; c: created 2 h ago; d: claimed just now;
    # e: claimed 30 min ago.
    ages = {"a": "2 hours", "b": "3 hours", "c": "2 hours", "e": "30 minutes"}
    for source, age in ages.items():
        sql_conn.execute(
            "UPDATE dispatches SET updated_at = now() - %s::interval WHERE id = %s",
            (age, claims[source].dispatch_id),
        )
    stuck = ledger.stuck_dispatches(timedelta(hours=1))
    assert [(d.source_id, d.state) for d in stuck] == [("b", "failed"), ("a", "claimed")]
    assert [d.source_id for d in ledger.stuck_dispatches(timedelta(minutes=10))] == [
        "b",
        "a",
        "e",
    ]
    assert len(ledger.stuck_dispatches(timedelta(minutes=10), limit=1)) == 1


def test_prune_deletes_old_runs_with_their_dispatches(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    old_runs = [
        ledger.record_run("acme", SLOT + timedelta(minutes=m), "schedule") for m in range(7)
    ]
    for run in old_runs:
        ledger.claim_dispatches(run, [_spec("a"), _spec("b")])
    recent = ledger.record_run("acme", SLOT + timedelta(hours=1), "schedule")
    ledger.claim_dispatches(recent, [_spec("a"), _spec("b"), _spec("c")])
    sql_conn.execute(
        "UPDATE runs SET created_at = now() - interval '40 days' WHERE id = ANY(%s)",
        ([r.id for r in old_runs],),
    )
    cutoff = datetime.now(UTC) - timedelta(days=30)

    counts = ledger.prune(cutoff, batch_size=3)  # 3 + 3 + 1: more than one batch
    assert (counts.runs, counts.dispatches) == (7, 14)
    assert _count(sql_conn, "SELECT count(*) FROM runs") == 1
    assert _count(sql_conn, "SELECT count(*) FROM dispatches") == 3
    assert ledger.prune(cutoff) == type(counts)(runs=0, dispatches=0)


# -- mirror ----------------------------------------------------------------------------------


def _doc(sub_id: str, **changes: Any) -> MirrorDoc:
    document: dict[str, Any] = {
        "name": f"{sub_id} news",
        "paused": False,
        "status": "active",
        "next_run_at": datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        "sources": [{"id": "feed", "kind": "rss", "params": {"url": "https://example.org"}}],
        **changes,
    }
    return MirrorDoc.from_document(sub_id, document, updated_at=datetime(2026, 3, 1, tzinfo=UTC))


def test_mirror_upsert_counts_inserts_updates_and_unchanged(
    ledger: Ledger, sql_conn: psycopg.Connection[Any]
) -> None:
    counts = ledger.upsert_mirror([_doc("a"), _doc("b"), _doc("c")])
    assert (counts.inserted, counts.updated, counts.unchanged) == (3, 0, 0)

    counts = ledger.upsert_mirror([_doc("a"), _doc("b", paused=True), _doc("d")])
    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 1, 1)

    row = sql_conn.execute(
        "SELECT name, paused, status, next_run_at, document->'sources'->0->>'kind', "
        "document->>'next_run_at' FROM subscriptions_mirror WHERE subscription_id = 'b'"
    ).fetchone()
    assert row == (
        "b news",
        True,
        "active",
        datetime(2026, 3, 8, 7, 0, tzinfo=UTC),
        "rss",
        "2026-03-08T07:00:00+00:00",
    )
    assert ledger.mirror_ids() == {"a", "b", "c", "d"}


def test_mirror_upsert_last_document_of_an_id_wins(ledger: Ledger) -> None:
    counts = ledger.upsert_mirror([_doc("a"), _doc("a", name="renamed")])
    assert (counts.inserted, counts.updated, counts.unchanged) == (1, 0, 0)
    assert ledger.upsert_mirror([_doc("a", name="renamed")]).unchanged == 1
    assert ledger.upsert_mirror([]).inserted == 0


def test_mirror_delete(ledger: Ledger) -> None:
    ledger.upsert_mirror([_doc("a"), _doc("b"), _doc("c")])
    assert ledger.delete_mirror(["a", "c", "never-there"]) == 2
    assert ledger.mirror_ids() == {"b"}
    assert ledger.delete_mirror([]) == 0
