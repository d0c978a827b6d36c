"""Data access for the PostgreSQL ledger: runs, dispatches and the subscription mirror.

Every public method is one short transaction on a pooled connection. Claims are conditional
writes (``INSERT ... ON CONFLICT DO NOTHING``), never read-then-write, so duplicate ticks,
duplicate due messages and concurrent fanout instances cannot claim the same dispatch key twice.

What a :class:`Claim` tells fanout to do:

- ``claimed``: this call won the key; create the Cloud Task.
- not ``claimed`` and state ``claimed`` or ``failed``: an earlier attempt won the key but did not
  (visibly) create the task. Create it again under the *same* task name; ALREADY_EXISTS from
  Cloud Tasks means the earlier attempt did land, and counts as done. (``must_create`` is true.)
- state ``created``: nothing to do.

fanout makes two round trips per due message: :meth:`Ledger.start_run` records the run and
claims every source's key in **one statement** (a data-modifying CTE), and
:meth:`Ledger.mark_dispatches` marks every create's outcome in **one statement**, both outside
a transaction (the pool's connections are in autocommit mode; a single statement is atomic
alone, so no ``BEGIN`` / ``COMMIT`` round trips around it; every other method runs in one
explicit transaction). The claim
semantics are those of :meth:`Ledger.record_run` + :meth:`Ledger.claim_dispatches` (which stay,
for reconcile, the CLI and tests):

- a CTE's inserts and its reads share one snapshot, so a row a *concurrent* claimer committed
  while our insert waited on its unique-index entry is neither inserted (ON CONFLICT DO NOTHING)
  nor seen by the statement's read. Such a key is not lost: it comes back missing from the
  statement, and only then is it read again in a second statement, whose fresh snapshot sees
  the winner's committed row (it is then ``claimed=False``, like any key won by someone else).
  Without a race the second statement never runs;
- inserts happen in one fixed order (runs first, then dispatches by source id), so concurrent
  duplicate claimers cannot deadlock on each other's uncommitted index entries.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from shared.outcomes import LOST_KEY, Report, Transition, transition

Reason = Literal["schedule", "catch-up", "manual", "replay"]
DispatchState = Literal["claimed", "created", "failed"]
REASONS: frozenset[str] = frozenset({"schedule", "catch-up", "manual", "replay"})
# last_error is for humans; a whole stack trace or HTTP body per attempt would bloat the table.
MAX_ERROR_CHARS = 2000


class LedgerError(RuntimeError):
    """The ledger refused an operation (bad input or an inconsistent state)."""


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    """A run row as record_run found or created it."""

    id: int
    subscription_id: str
    slot: datetime
    reason: str
    # True when this call inserted the row; False when the (subscription, slot) was recorded before.
    recorded: bool


@dataclass(frozen=True)
class SourceSpec:
    """One source of a due subscription, as fanout wants it dispatched."""

    source_id: str
    source_kind: str
    task_name: str
    queue: str


@dataclass(frozen=True)
class Claim:
    """The outcome of claiming one dispatch key."""

    dispatch_id: int
    run_id: int
    subscription_id: str
    slot: datetime
    source_id: str
    source_kind: str
    # The stored name and queue: on a retry, recreate under these, not freshly derived ones.
    task_name: str
    queue: str
    state: DispatchState
    attempts: int
    # True when this call inserted the row (won the key).
    claimed: bool

    @property
    def must_create(self) -> bool:
        """Whether the caller has to (re)create the Cloud Task: anything short of ``created``."""
        return self.state != "created"


@dataclass(frozen=True)
class RunClaims:
    """What :meth:`Ledger.start_run` did: the run (recorded now or before) and one claim per
    source, in the order the sources were given."""

    run: RunRef
    claims: list[Claim]


@dataclass(frozen=True)
class RunRow:
    """A run with its dispatch counts (``run_overview``)."""

    run_id: int
    subscription_id: str
    slot: datetime
    reason: str
    selected_at: datetime
    created_at: datetime
    source_message_id: str | None
    dispatches: int
    created: int
    claimed: int
    failed: int
    latest_error: str | None
    succeeded: int = 0
    skipped: int = 0
    failed_final: int = 0
    lost: int = 0
    # Outcomes not in yet: created dispatches without a final outcome.
    pending: int = 0
    completed_at: datetime | None = None
    run_succeeded: bool | None = None


@dataclass(frozen=True)
class DispatchRow:
    """One row of ``dispatches``."""

    id: int
    run_id: int
    subscription_id: str
    slot: datetime
    source_id: str
    source_kind: str
    task_name: str
    queue: str
    state: str
    attempts: int
    last_error: str | None
    claimed_at: datetime
    created_at: datetime | None
    updated_at: datetime
    execution_state: str | None = None
    execution_final: bool = False
    execution_attempts: int = 0
    first_started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    items: int | None = None
    execution_error: str | None = None


@dataclass(frozen=True)
class OutcomeCounts:
    """Dispatches of one run by final outcome."""

    succeeded: int
    failed: int
    skipped: int
    lost: int


@dataclass(frozen=True)
class RunCompletion:
    """A completed run whose ``run-completed`` event the caller has claimed and must publish."""

    run_id: int
    subscription_id: str
    slot: datetime
    reason: str
    succeeded: bool
    completed_at: datetime
    counts: OutcomeCounts
    items: int


@dataclass(frozen=True)
class OutcomeRecorded:
    """What record_outcome did to one dispatch and its run."""

    dispatch_id: int
    run_id: int
    source_kind: str
    # The row's state after the report (which may be another report's: outcomes only move
    # forward), whether that is final, and the highest attempt seen.
    state: str
    final: bool
    attempts: int
    # The run is complete and this call claimed publishing its event: publish, then call
    # mark_completion_published (or release_completion_claim if the publish failed).
    completion: RunCompletion | None
    # The run is complete, its event is not out, and another publisher holds the claim.
    completion_pending: bool


@dataclass(frozen=True)
class LostDispatch:
    """A dispatch reconcile declared lost: created long ago, no final outcome since."""

    dispatch_id: int
    run_id: int
    subscription_id: str
    slot: datetime
    source_id: str
    source_kind: str
    task_name: str
    created_at: datetime


@dataclass(frozen=True)
class OutcomeSummary:
    """Dispatches of one source kind in a time window, by execution outcome."""

    source_kind: str
    dispatches: int
    succeeded: int
    failed: int
    skipped: int
    lost: int
    # Created, no final outcome yet (running, retrying, or not reported).
    pending: int
    # Never created: claimed or failed to create.
    not_created: int


@dataclass(frozen=True)
class PruneCounts:
    """Rows deleted by prune (dispatches go with their runs)."""

    runs: int
    dispatches: int


@dataclass(frozen=True)
class MirrorDoc:
    """A Firestore subscription document, as the mirror stores it."""

    subscription_id: str
    document: Mapping[str, Any]
    name: str | None = None
    paused: bool = False
    status: str | None = None
    next_run_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_document(
        cls,
        subscription_id: str,
        document: Mapping[str, Any],
        updated_at: datetime | None = None,
    ) -> MirrorDoc:
        """Lift the columns the mirror indexes out of a subscription document."""
        next_run_at = document.get("next_run_at")
        if isinstance(next_run_at, str):
            next_run_at = datetime.fromisoformat(next_run_at)
        name = document.get("name")
        status = document.get("status")
        return cls(
            subscription_id=subscription_id,
            document=document,
            name=None if name is None else str(name),
            paused=bool(document.get("paused", False)),
            status=None if status is None else str(status),
            next_run_at=next_run_at if isinstance(next_run_at, datetime) else None,
            updated_at=updated_at,
        )


@dataclass(frozen=True)
class MirrorCounts:
    """What upsert_mirror did: new rows, changed rows, rows already equal."""

    inserted: int
    updated: int
    unchanged: int


# -- pool ------------------------------------------------------------------------------------


def _utc_session(conn: psycopg.Connection[Any]) -> None:
    # Timestamps come back in UTC whatever the server's TimeZone: what the CLI prints and what the
    # tests compare stays stable across machines.
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    # Pooled connections live in autocommit; calls that need a transaction open one explicitly
    # (pooled_transaction). fanout's two single-statement calls then run as they are, where
    # switching the mode to autocommit and back cost four wait()s per due message on the client.
    conn.autocommit = True


@contextmanager
def pooled_transaction(
    pool: ConnectionPool[psycopg.Connection[Any]],
) -> Iterator[psycopg.Connection[Any]]:
    """A connection of an :func:`open_pool` pool inside one transaction: committed when the
    block ends, rolled back on an exception (what a non-autocommit connection did implicitly)."""
    with pool.connection() as conn, conn.transaction():
        yield conn


class ProbeIfIdle:
    """The pool's ``check``: probe a connection before handing it out only if it sat idle.

    A serverless instance thawed after minutes of idleness may hold connections the server or a
    proxy has closed, so those are probed (one round trip) and replaced if dead. A connection
    that came back to the pool moments ago is handed out as it is: during a burst the probe would
    otherwise add a round trip to every ledger call (three per due message in fanout). Should
    the server restart under a busy pool, the next call on each connection fails, which the
    callers report as retryable, and the pool discards the broken connection.

    The clock starts when a connection is handed out, not when it comes back: a ``reset``
    callback would make psycopg_pool return every connection through one of its worker threads
    (a hand-off per ledger call, ~0.1 ms of fanout's CPU each, measured). Ledger calls hold a
    connection for milliseconds, so the idle time is the same to within a call; a connection
    held longer only looks idler, and is probed sooner, never later.
    """

    def __init__(
        self, idle_seconds: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._handed_out: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        # How many probes ran: for tests and debugging (unlocked, so approximate under threads).
        self.probes = 0

    def check(self, conn: psycopg.Connection[Any]) -> None:
        """Raise if an idle connection is dead (the pool then replaces it)."""
        now = self._clock()
        last = self._handed_out.get(conn)
        self._handed_out[conn] = now
        if last is not None and now - last < self.idle_seconds:
            return
        self.probes += 1
        ConnectionPool.check_connection(conn)


def open_pool(
    conninfo: str,
    min_size: int = 1,
    max_size: int = 4,
    *,
    timeout: float = 10.0,
    probe: ProbeIfIdle | None = None,
) -> ConnectionPool[psycopg.Connection[Any]]:
    """A connection pool that has not connected yet.

    It opens on first use by :class:`Ledger` (or an explicit ``pool.open()``), so building one at
    import or configuration time makes no network call. Connections that sat idle are probed
    before being handed out (:class:`ProbeIfIdle`). Connections are in autocommit mode: code
    that needs several statements in one transaction takes its connection through
    :func:`pooled_transaction`.
    """
    probe = probe or ProbeIfIdle()
    return ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=timeout,
        configure=_utc_session,
        check=probe.check,
        name="ledger",
    )


# -- the ledger ------------------------------------------------------------------------------


class Ledger:
    """Runs, dispatches and the subscription mirror, on a psycopg connection pool."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self._pool = pool
        self._open_lock = threading.Lock()
        self._opened = False

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        return self._pool

    def _open(self) -> ConnectionPool[psycopg.Connection[Any]]:
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    if self._pool.closed:
                        self._pool.open()
                    self._opened = True
        return self._pool

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        # One transaction per call, committed on success and rolled back on an exception.
        return pooled_transaction(self._open())

    @contextmanager
    def _autocommit(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection outside any transaction, for a call made of single statements
        that need none around them (each is atomic on its own).

        A transaction costs a ``BEGIN`` round trip before the first statement and a ``COMMIT``
        round trip after the last: for fanout's two calls per due message, four extra round
        trips.
        """
        pool = self._open()
        # getconn / putconn rather than pool.connection(): its ``with conn`` ends with a
        # commit() that, in autocommit, only takes the lock and waits on nothing.
        conn = pool.getconn()
        try:
            yield conn
        finally:
            pool.putconn(conn)

    # -- runs ---------------------------------------------------------------------------------

    def record_run(
        self,
        subscription_id: str,
        slot: datetime,
        reason: str,
        message_id: str | None = None,
        *,
        selected_at: datetime | None = None,
    ) -> RunRef:
        """Record the run of (subscription, slot), or find the one recorded before.

        One conditional insert; only when it inserted nothing (a duplicate tick, a replay) is the
        existing row read, in a second statement whose fresh snapshot sees a concurrent
        winner's committed row.
        """
        _require_aware(slot, "slot")
        if selected_at is not None:
            _require_aware(selected_at, "selected_at")
        if reason not in REASONS:
            raise LedgerError(f"reason {reason!r} is not one of {sorted(REASONS)}")
        with self._connection() as conn:
            row = conn.execute(
                "INSERT INTO runs (subscription_id, slot, reason, source_message_id, selected_at) "
                "VALUES (%s, %s, %s, %s, coalesce(%s, now())) "
                "ON CONFLICT (subscription_id, slot) DO NOTHING "
                "RETURNING id, slot, reason",
                (subscription_id, slot, reason, message_id, selected_at),
            ).fetchone()
            if row is not None:
                return RunRef(row[0], subscription_id, row[1], row[2], recorded=True)
            row = conn.execute(
                "SELECT id, slot, reason FROM runs WHERE subscription_id = %s AND slot = %s",
                (subscription_id, slot),
            ).fetchone()
        if row is None:
            # Only a prune racing with this very call can get here.
            raise LedgerError(f"run {subscription_id} @ {slot.isoformat()} vanished")
        return RunRef(row[0], subscription_id, row[1], row[2], recorded=False)

    def runs_for(self, subscription_id: str, limit: int = 20) -> list[RunRow]:
        """The subscription's runs with dispatch counts, newest slot first."""
        with self._connection() as conn, conn.cursor(row_factory=class_row(RunRow)) as cur:
            # The same columns as the run_overview view, but the LIMIT is applied before the
            # counting: a minutely subscription has tens of thousands of runs.
            cur.execute(
                "SELECT r.id AS run_id, r.subscription_id, r.slot, r.reason, r.selected_at, "
                "r.created_at, r.source_message_id, c.dispatches, c.created, c.claimed, "
                "c.failed, c.latest_error, c.succeeded, c.skipped, c.failed_final, c.lost, "
                "c.pending, r.completed_at, r.succeeded AS run_succeeded "
                "FROM (SELECT * FROM runs WHERE subscription_id = %s "
                "      ORDER BY slot DESC LIMIT %s) r "
                "CROSS JOIN LATERAL ("
                "  SELECT count(*) AS dispatches, "
                "         count(*) FILTER (WHERE d.state = 'created') AS created, "
                "         count(*) FILTER (WHERE d.state = 'claimed') AS claimed, "
                "         count(*) FILTER (WHERE d.state = 'failed') AS failed, "
                "         (array_agg(coalesce(d.execution_error, d.last_error) "
                "                    ORDER BY d.updated_at DESC) "
                "            FILTER (WHERE coalesce(d.execution_error, d.last_error) IS NOT NULL)"
                "         )[1] AS latest_error, "
                "         count(*) FILTER (WHERE d.execution_state = 'succeeded') AS succeeded, "
                "         count(*) FILTER (WHERE d.execution_state = 'skipped') AS skipped, "
                "         count(*) FILTER (WHERE d.execution_state = 'failed' "
                "                          AND d.execution_final) AS failed_final, "
                "         count(*) FILTER (WHERE d.execution_state = 'lost') AS lost, "
                "         count(*) FILTER (WHERE d.state = 'created' "
                "                          AND NOT d.execution_final) AS pending "
                "  FROM dispatches d WHERE d.run_id = r.id) c "
                "ORDER BY r.slot DESC",
                (subscription_id, limit),
            )
            return cur.fetchall()

    # -- dispatches -----------------------------------------------------------------------------

    def claim_dispatch(
        self, run: RunRef, source_id: str, source_kind: str, task_name: str, queue: str
    ) -> Claim:
        """Claim one dispatch key (run's subscription and slot, source_id). See :class:`Claim`."""
        return self.claim_dispatches(run, [SourceSpec(source_id, source_kind, task_name, queue)])[0]

    def claim_dispatches(self, run: RunRef, sources: Sequence[SourceSpec]) -> list[Claim]:
        """Claim the dispatch keys of all of a run's sources in one round trip.

        Returns one Claim per source, in the order given. The insert and the read-back are
        pipelined: the read is a separate statement so that rows committed by a concurrent
        claimer (which the insert waited for) are visible to it.
        """
        if not sources:
            return []
        ids = _distinct_source_ids(sources)
        # Inserting in one fixed order (by source id) keeps two concurrent claimers of the same
        # keys from deadlocking on each other's uncommitted unique-index entries.
        ordered = sorted(sources, key=lambda s: s.source_id)
        with self._connection() as conn, conn.pipeline():
            inserted_cur = conn.execute(
                "INSERT INTO dispatches (run_id, subscription_id, slot, source_id, "
                "source_kind, task_name, queue) "
                "SELECT %s, %s, %s, s.source_id, s.source_kind, s.task_name, s.queue "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) "
                "WITH ORDINALITY AS s(source_id, source_kind, task_name, queue, n) "
                "ORDER BY s.n "
                "ON CONFLICT (subscription_id, slot, source_id) DO NOTHING "
                "RETURNING id",
                (
                    run.id,
                    run.subscription_id,
                    run.slot,
                    [s.source_id for s in ordered],
                    [s.source_kind for s in ordered],
                    [s.task_name for s in ordered],
                    [s.queue for s in ordered],
                ),
            )
            rows_cur = conn.execute(_READ_CLAIMS, (run.subscription_id, run.slot, ids))
            inserted = {int(r[0]) for r in inserted_cur.fetchall()}
            rows = rows_cur.fetchall()
        by_source = {str(r[4]): _claim(r, claimed=r[0] in inserted) for r in rows}
        missing = [i for i in ids if i not in by_source]
        if missing:
            raise LedgerError(f"dispatch rows vanished while claiming: {missing}")
        return [by_source[i] for i in ids]

    def start_run(
        self,
        subscription_id: str,
        slot: datetime,
        reason: str,
        sources: Sequence[SourceSpec],
        message_id: str | None = None,
    ) -> RunClaims:
        """Record the run of (subscription, slot) and claim its sources' keys: one statement.

        The same outcome as :meth:`record_run` followed by :meth:`claim_dispatches` (see the
        module docstring for why a concurrent claimer cannot make it claim a key twice); claims
        come back in the order of ``sources``.
        """
        _require_aware(slot, "slot")
        if reason not in REASONS:
            raise LedgerError(f"reason {reason!r} is not one of {sorted(REASONS)}")
        ids = _distinct_source_ids(sources)
        ordered = sorted(sources, key=lambda s: s.source_id)
        params = {
            "sub": subscription_id,
            "slot": slot,
            "reason": reason,
            "msg": message_id,
            "sources": _json_param(
                [[s.source_id, s.source_kind, s.task_name, s.queue] for s in ordered]
            ),
        }
        run: RunRef | None = None
        by_source: dict[str, Claim] = {}
        # Autocommit: the statement is atomic alone, and the re-read below must see rows
        # committed after it (READ COMMITTED would give it a fresh snapshot either way).
        with self._autocommit() as conn:
            for r in conn.execute(_START_RUN, params).fetchall():
                if r[0] == "run":
                    run = RunRef(r[1], subscription_id, r[4], r[9], recorded=bool(r[11]))
                else:
                    by_source[str(r[5])] = _claim(r[1:11], claimed=bool(r[11]))
            missing = [i for i in ids if i not in by_source]
            if run is not None and missing:
                # Keys a concurrent claimer committed after our snapshot: this second
                # statement sees them (their claim belongs to the other claimer).
                for r in conn.execute(_READ_CLAIMS, (subscription_id, slot, missing)).fetchall():
                    by_source[str(r[4])] = _claim(r, claimed=False)
        if run is None:
            # A concurrent transaction inserted this very run while we waited on its key and
            # committed after our snapshot, so nothing was claimed: do it the two-statement way,
            # whose fresh snapshots see the winner's rows.
            run = self.record_run(subscription_id, slot, reason, message_id)
            return RunClaims(run, self.claim_dispatches(run, sources))
        lost = [i for i in ids if i not in by_source]
        if lost:
            raise LedgerError(f"dispatch rows vanished while claiming: {lost}")
        return RunClaims(run, [by_source[i] for i in ids])

    def mark_dispatches(
        self, created: Sequence[int], failed: Sequence[tuple[int, str]] = ()
    ) -> tuple[int, int]:
        """:meth:`mark_created_many` and :meth:`mark_failed` for many dispatches, one statement.

        ``failed`` pairs each dispatch id with its error. A ``created`` row is never changed
        (neither re-marked nor downgraded). Returns (rows marked created, rows marked failed).
        """
        if not created and not failed:
            return 0, 0
        marks: list[tuple[int, str | None]] = [(i, None) for i in created]
        marks.extend((i, e[:MAX_ERROR_CHARS]) for i, e in failed)
        with self._autocommit() as conn:
            rows = conn.execute(_MARK_DISPATCHES, (_json_param(marks),)).fetchall()
        marked_created = sum(1 for (state,) in rows if state == "created")
        return marked_created, len(rows) - marked_created

    def run_reasons(self, run_ids: Sequence[int]) -> dict[int, str]:
        """The reason of each run (a run pruned meanwhile is absent), in one query.

        A dispatch row does not repeat its run's reason, which the collector body carries.
        """
        if not run_ids:
            return {}
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, reason FROM runs WHERE id = ANY(%s)", (list(run_ids),)
            ).fetchall()
        return {int(row[0]): str(row[1]) for row in rows}

    def mark_created(self, dispatch_id: int) -> bool:
        """The Cloud Task exists (created, or ALREADY_EXISTS). False if it was already marked."""
        return self.mark_created_many([dispatch_id]) == 1

    def mark_created_many(self, dispatch_ids: Sequence[int]) -> int:
        """mark_created for many dispatches in one statement; returns how many changed state."""
        if not dispatch_ids:
            return 0
        with self._connection() as conn:
            cur = conn.execute(
                "UPDATE dispatches SET state = 'created', created_at = now(), updated_at = now() "
                "WHERE id = ANY(%s) AND state <> 'created'",
                (list(dispatch_ids),),
            )
            return cur.rowcount

    def mark_failed(self, dispatch_id: int, error: str) -> bool:
        """A create attempt failed: state ``failed``, attempts + 1, the error kept (truncated).

        Never downgrades a ``created`` row (a concurrent duplicate may have succeeded meanwhile);
        returns False in that case.
        """
        with self._connection() as conn:
            cur = conn.execute(
                "UPDATE dispatches SET state = 'failed', attempts = attempts + 1, "
                "last_error = %s, updated_at = now() "
                "WHERE id = %s AND state <> 'created'",
                (error[:MAX_ERROR_CHARS], dispatch_id),
            )
            return cur.rowcount == 1

    def dispatches_for(
        self, subscription_id: str, slot: datetime | None = None, limit: int = 100
    ) -> list[DispatchRow]:
        """The subscription's dispatches (of one slot, if given), newest slot first."""
        if slot is not None:
            _require_aware(slot, "slot")
        with self._connection() as conn, conn.cursor(row_factory=class_row(DispatchRow)) as cur:
            cur.execute(
                f"SELECT {_DISPATCH_COLUMNS} FROM dispatches "
                "WHERE subscription_id = %s AND (%s::timestamptz IS NULL OR slot = %s) "
                "ORDER BY slot DESC, source_id LIMIT %s",
                (subscription_id, slot, slot, limit),
            )
            return cur.fetchall()

    # -- outcomes -------------------------------------------------------------------------------

    def record_outcome(
        self,
        subscription_id: str,
        slot: datetime,
        source_id: str,
        report: Report,
        *,
        max_attempts_for: Callable[[str], int],
        lease: timedelta,
    ) -> OutcomeRecorded | None:
        """Move one dispatch forward with a collector's report; complete its run if it is done.

        ``None`` when no dispatch has that key. One transaction: lock the run row (results of
        one run are serialised, so the last one to finish sees the others finished), one
        conditional ``UPDATE`` of the dispatch (shared/outcomes.py: the report replaces the
        row's outcome only when its precedence key is greater; the attempts are the maximum
        seen), then completion and the claim on its event (see :class:`OutcomeRecorded`).
        A report proves the task exists, so a row still ``claimed`` or ``failed`` (fanout
        crashed before marking it) becomes ``created``.
        """
        _require_aware(slot, "slot")
        with self._connection() as conn:
            target = conn.execute(
                "SELECT d.id, d.run_id, d.source_kind FROM dispatches d "
                "JOIN runs r ON r.id = d.run_id "
                "WHERE d.subscription_id = %s AND d.slot = %s AND d.source_id = %s "
                "FOR UPDATE OF r",
                (subscription_id, slot, source_id),
            ).fetchone()
            if target is None:
                return None
            dispatch_id, run_id, kind = int(target[0]), int(target[1]), str(target[2])
            step = transition(report, max_attempts=max_attempts_for(kind))
            with conn.pipeline():
                updated_cur = conn.execute(
                    _RECORD_OUTCOME, _outcome_params(dispatch_id, report, step)
                )
                claimed_cur = conn.execute(_COMPLETE_AND_CLAIM, {"runs": [run_id], "lease": lease})
                run_cur = conn.execute(
                    "SELECT completed_at IS NOT NULL, completion_published_at IS NOT NULL "
                    "FROM runs WHERE id = %s",
                    (run_id,),
                )
                updated = updated_cur.fetchone()
                claimed = claimed_cur.fetchone() is not None
                run_state = run_cur.fetchone()
            completion = _completions(conn, [run_id])[0] if claimed else None
        if updated is None or run_state is None:
            raise LedgerError(f"dispatch {dispatch_id} or run {run_id} vanished while recording")
        completed, published = bool(run_state[0]), bool(run_state[1])
        return OutcomeRecorded(
            dispatch_id=dispatch_id,
            run_id=run_id,
            source_kind=kind,
            state=str(updated[0]),
            final=bool(updated[1]),
            attempts=int(updated[2]),
            completion=completion,
            completion_pending=completed and not published and not claimed,
        )

    def complete_runs(self, run_ids: Sequence[int], *, lease: timedelta) -> list[RunCompletion]:
        """Complete the runs that are done and claim their events (reconcile, after marking
        dispatches lost, and the sweep of completed runs whose event never went out)."""
        if not run_ids:
            return []
        ids = sorted(set(run_ids))
        with self._connection() as conn:
            # Locked in id order, like record_outcome's one lock, so two sweeps never deadlock.
            conn.execute("SELECT id FROM runs WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (ids,))
            claimed = [
                int(r[0]) for r in conn.execute(_COMPLETE_AND_CLAIM, {"runs": ids, "lease": lease})
            ]
            return _completions(conn, claimed)

    def unpublished_completions(self, older_than: timedelta, limit: int = 500) -> list[int]:
        """Runs completed at least ``older_than`` ago whose event is not out yet."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id FROM runs WHERE completed_at IS NOT NULL "
                "AND completion_published_at IS NULL AND completed_at < now() - %s "
                "ORDER BY completed_at LIMIT %s",
                (older_than, limit),
            ).fetchall()
        return [int(r[0]) for r in rows]

    def mark_completion_published(self, run_id: int, message_id: str) -> bool:
        """The run-completed event is out; False if it was recorded before."""
        with self._connection() as conn:
            cur = conn.execute(
                "UPDATE runs SET completion_published_at = now(), completion_message_id = %s "
                "WHERE id = %s AND completion_published_at IS NULL",
                (message_id, run_id),
            )
            return cur.rowcount == 1

    def release_completion_claim(self, run_id: int) -> None:
        """Publishing failed: let the next result or sweep publish at once, not after the lease."""
        with self._connection() as conn:
            conn.execute(
                "UPDATE runs SET completion_claimed_at = NULL "
                "WHERE id = %s AND completion_published_at IS NULL",
                (run_id,),
            )

    def mark_lost(
        self, older_than: timedelta, limit: int = 1000, *, dry_run: bool = False
    ) -> list[LostDispatch]:
        """Dispatches created longer than ``older_than`` ago with no final outcome become
        ``lost`` (final). A real final outcome reported later still replaces it. ``dry_run``
        returns them and changes nothing."""
        # The predicate matches dispatches_unfinished_execution_idx word for word.
        candidates = (
            "SELECT id FROM dispatches "
            "WHERE state = 'created' AND NOT execution_final AND created_at < now() - %s "
            "ORDER BY created_at LIMIT %s"
        )
        returned = (
            "id, run_id, subscription_id, slot, source_id, source_kind, task_name, created_at"
        )
        with self._connection() as conn:
            if dry_run:
                rows = conn.execute(
                    f"SELECT {returned} FROM dispatches WHERE id IN ({candidates})",
                    (older_than, limit),
                ).fetchall()
            else:
                rows = conn.execute(
                    "UPDATE dispatches SET execution_state = 'lost', execution_final = true, "
                    "outcome_key = %s, updated_at = now() "
                    f"WHERE id IN ({candidates} FOR UPDATE SKIP LOCKED) AND NOT execution_final "
                    f"RETURNING {returned}",
                    (LOST_KEY, older_than, limit),
                ).fetchall()
        return [LostDispatch(*row) for row in rows]

    def execution_state(self, subscription_id: str, slot: datetime, source_id: str) -> str | None:
        """The dispatch's execution state (``None``: no outcome yet, or no such dispatch)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT execution_state FROM dispatches "
                "WHERE subscription_id = %s AND slot = %s AND source_id = %s",
                (subscription_id, slot, source_id),
            ).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def outcome_summary(self, since: timedelta) -> list[OutcomeSummary]:
        """Dispatches claimed in the last ``since``, per source kind, by outcome."""
        with self._connection() as conn, conn.cursor(row_factory=class_row(OutcomeSummary)) as cur:
            cur.execute(
                "SELECT source_kind, count(*) AS dispatches, "
                "count(*) FILTER (WHERE execution_state = 'succeeded') AS succeeded, "
                "count(*) FILTER (WHERE execution_state = 'failed' AND execution_final) "
                "  AS failed, "
                "count(*) FILTER (WHERE execution_state = 'skipped') AS skipped, "
                "count(*) FILTER (WHERE execution_state = 'lost') AS lost, "
                "count(*) FILTER (WHERE state = 'created' AND NOT execution_final) AS pending, "
                "count(*) FILTER (WHERE state <> 'created') AS not_created "
                "FROM dispatches WHERE claimed_at >= now() - %s "
                "GROUP BY source_kind ORDER BY source_kind",
                (since,),
            )
            return cur.fetchall()

    # -- maintenance ----------------------------------------------------------------------------

    def stuck_dispatches(self, older_than: timedelta, limit: int = 1000) -> list[DispatchRow]:
        """Dispatches still ``claimed`` or ``failed`` whose last change is older than
        ``older_than``, oldest first: what maintenance reconcile re-creates."""
        with self._connection() as conn, conn.cursor(row_factory=class_row(DispatchRow)) as cur:
            # The state list matches the partial index predicate word for word, so it is used.
            cur.execute(
                f"SELECT {_DISPATCH_COLUMNS} FROM dispatches "
                "WHERE state IN ('claimed', 'failed') AND updated_at < now() - %s "
                "ORDER BY updated_at LIMIT %s",
                (older_than, limit),
            )
            return cur.fetchall()

    def prune(self, before: datetime, batch_size: int = 5000) -> PruneCounts:
        """Delete runs recorded before ``before``, with their dispatches.

        In batches of ``batch_size`` runs, one short transaction each, so a first prune of a
        large backlog never holds locks for long.
        """
        _require_aware(before, "before")
        runs = dispatches = 0
        while True:
            with self._connection() as conn:
                row = conn.execute(
                    "WITH doomed AS ("
                    "  DELETE FROM runs WHERE id IN ("
                    "    SELECT id FROM runs WHERE created_at < %s ORDER BY id LIMIT %s)"
                    "  RETURNING id) "
                    # The cascade runs at the end of the statement, so the count still sees
                    # the dispatches about to go.
                    "SELECT (SELECT count(*) FROM doomed), "
                    "(SELECT count(*) FROM dispatches WHERE run_id IN (SELECT id FROM doomed))",
                    (before, batch_size),
                ).fetchone()
            batch_runs, batch_dispatches = (int(row[0]), int(row[1])) if row else (0, 0)
            runs += batch_runs
            dispatches += batch_dispatches
            if batch_runs < batch_size:
                return PruneCounts(runs=runs, dispatches=dispatches)

    # -- subscription mirror ------------------------------------------------------------------

    def upsert_mirror(self, docs: Iterable[MirrorDoc]) -> MirrorCounts:
        """Insert or update mirror rows in one statement; rows already equal are not rewritten
        (their ``synced_at`` stays the time they last changed)."""
        latest: dict[str, MirrorDoc] = {}
        for doc in docs:
            # One statement cannot update a row twice; the last document of an id wins.
            latest[doc.subscription_id] = doc
        if not latest:
            return MirrorCounts(0, 0, 0)
        items = list(latest.values())
        with self._connection() as conn:
            rows = conn.execute(
                "INSERT INTO subscriptions_mirror AS m "
                "(subscription_id, document, name, paused, status, next_run_at, updated_at) "
                "SELECT * FROM unnest(%s::text[], %s::jsonb[], %s::text[], %s::boolean[], "
                "%s::text[], %s::timestamptz[], %s::timestamptz[]) "
                "ON CONFLICT (subscription_id) DO UPDATE SET "
                "document = excluded.document, name = excluded.name, paused = excluded.paused, "
                "status = excluded.status, next_run_at = excluded.next_run_at, "
                "updated_at = excluded.updated_at, synced_at = now() "
                "WHERE (m.document, m.name, m.paused, m.status, m.next_run_at, m.updated_at) "
                "IS DISTINCT FROM (excluded.document, excluded.name, excluded.paused, "
                "excluded.status, excluded.next_run_at, excluded.updated_at) "
                # xmax = 0 on the returned row version means it was inserted, not updated.
                "RETURNING (xmax = 0)",
                (
                    [d.subscription_id for d in items],
                    [Jsonb(dict(d.document), dumps=_dumps) for d in items],
                    [d.name for d in items],
                    [d.paused for d in items],
                    [d.status for d in items],
                    [d.next_run_at for d in items],
                    [d.updated_at for d in items],
                ),
            ).fetchall()
        inserted = sum(1 for (was_insert,) in rows if was_insert)
        updated = len(rows) - inserted
        return MirrorCounts(inserted, updated, len(items) - len(rows))

    def delete_mirror(self, subscription_ids: Iterable[str]) -> int:
        """Delete mirror rows; returns how many existed."""
        ids = list(subscription_ids)
        if not ids:
            return 0
        with self._connection() as conn:
            cur = conn.execute(
                "DELETE FROM subscriptions_mirror WHERE subscription_id = ANY(%s)", (ids,)
            )
            return cur.rowcount

    def mirror_ids(self) -> set[str]:
        """Every subscription id in the mirror (sync diffs it against Firestore)."""
        with self._connection() as conn:
            return {
                str(r[0]) for r in conn.execute("SELECT subscription_id FROM subscriptions_mirror")
            }


_CLAIM_COLUMNS = (
    "id, run_id, subscription_id, slot, source_id, source_kind, task_name, queue, state, attempts"
)
_READ_CLAIMS = (
    f"SELECT {_CLAIM_COLUMNS} FROM dispatches "
    "WHERE subscription_id = %s AND slot = %s AND source_id = ANY(%s)"
)

# record_run + claim_dispatches as one statement (Ledger.start_run). Rows: one 'run' row (id,
# slot and reason in the claim columns' places, recorded in the last column) and one 'claim' row
# per key the statement inserted or saw already stored (claimed in the last column). The CTEs
# share one snapshot: a plain read cannot see what new_run / new_claims insert, so "inserted"
# and "stored before" never overlap, and a row committed concurrently after the snapshot is in
# neither (start_run reads it again).
_START_RUN = (
    "WITH src AS ("
    "  SELECT e->>0 AS source_id, e->>1 AS source_kind, e->>2 AS task_name, e->>3 AS queue, n "
    "  FROM json_array_elements(%(sources)s::json) WITH ORDINALITY AS j(e, n)), "
    "new_run AS ("
    "  INSERT INTO runs (subscription_id, slot, reason, source_message_id) "
    "  VALUES (%(sub)s, %(slot)s, %(reason)s, %(msg)s) "
    "  ON CONFLICT (subscription_id, slot) DO NOTHING "
    "  RETURNING id, slot, reason), "
    "run AS ("
    "  SELECT id, slot, reason, true AS recorded FROM new_run "
    "  UNION ALL "
    "  SELECT id, slot, reason, false FROM runs "
    "  WHERE subscription_id = %(sub)s AND slot = %(slot)s), "
    "new_claims AS ("
    "  INSERT INTO dispatches (run_id, subscription_id, slot, source_id, source_kind, "
    "    task_name, queue) "
    "  SELECT run.id, %(sub)s, %(slot)s, s.source_id, s.source_kind, s.task_name, s.queue "
    "  FROM run, src AS s ORDER BY s.n "
    "  ON CONFLICT (subscription_id, slot, source_id) DO NOTHING "
    f"  RETURNING {_CLAIM_COLUMNS}) "
    "SELECT 'run', id, NULL::bigint, NULL::text, slot, NULL::text, NULL::text, NULL::text, "
    "  NULL::text, reason, NULL::integer, recorded FROM run "
    f"UNION ALL SELECT 'claim', {_CLAIM_COLUMNS}, true FROM new_claims "
    f"UNION ALL SELECT 'claim', {_CLAIM_COLUMNS}, false FROM dispatches "
    "  WHERE subscription_id = %(sub)s AND slot = %(slot)s "
    "  AND source_id = ANY(ARRAY(SELECT source_id FROM src))"
)

# mark_created_many and mark_failed in one statement: a NULL error marks created, any other
# marks failed (attempts + 1). A created row is left alone either way.
_MARK_DISPATCHES = (
    "UPDATE dispatches d SET "
    "state = CASE WHEN u.error IS NULL THEN 'created' ELSE 'failed' END, "
    "created_at = CASE WHEN u.error IS NULL THEN now() ELSE d.created_at END, "
    "attempts = CASE WHEN u.error IS NULL THEN d.attempts ELSE d.attempts + 1 END, "
    "last_error = coalesce(u.error, d.last_error), updated_at = now() "
    "FROM (SELECT (e->>0)::bigint AS id, e->>1 AS error "
    "  FROM json_array_elements(%s::json) AS j(e)) AS u "
    "WHERE d.id = u.id AND d.state <> 'created' "
    "RETURNING d.state"
)


def _claim(r: Sequence[Any], *, claimed: bool) -> Claim:
    return Claim(
        dispatch_id=r[0],
        run_id=r[1],
        subscription_id=r[2],
        slot=r[3],
        source_id=r[4],
        source_kind=r[5],
        task_name=r[6],
        queue=r[7],
        state=r[8],
        attempts=r[9],
        claimed=claimed,
    )


def _distinct_source_ids(sources: Sequence[SourceSpec]) -> list[str]:
    ids = [s.source_id for s in sources]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise LedgerError(f"duplicate source ids in one claim: {duplicates}")
    return ids


_DISPATCH_COLUMNS = (
    "id, run_id, subscription_id, slot, source_id, source_kind, task_name, queue, state, "
    "attempts, last_error, claimed_at, created_at, updated_at, execution_state, execution_final, "
    "execution_attempts, first_started_at, finished_at, duration_ms, items, execution_error"
)

# Completes the given runs whose dispatches are all final (or that completed earlier) and claims
# publishing their run-completed event, unless it is out or another publisher holds a live claim.
# Callers hold the runs' row locks first: without them two results finishing a run's last two
# dispatches concurrently would each see the other's still unfinished and neither complete it.
_COMPLETE_AND_CLAIM = (
    "WITH agg AS ("
    "  SELECT run_id, bool_and(execution_final) AS all_final, "
    "         bool_and(execution_state IN ('succeeded', 'skipped')) AS all_ok "
    "  FROM dispatches WHERE run_id = ANY(%(runs)s) GROUP BY run_id) "
    "UPDATE runs r SET completed_at = coalesce(r.completed_at, now()), "
    "  succeeded = coalesce(r.succeeded, agg.all_ok), completion_claimed_at = now() "
    "FROM agg WHERE r.id = agg.run_id AND r.completion_published_at IS NULL "
    "  AND (r.completed_at IS NOT NULL OR agg.all_final) "
    "  AND (r.completion_claimed_at IS NULL OR r.completion_claimed_at < now() - %(lease)s) "
    "RETURNING r.id"
)

_COMPLETION_EVENTS = (
    "SELECT r.id, r.subscription_id, r.slot, r.reason, r.succeeded, r.completed_at, "
    "  count(*) FILTER (WHERE d.execution_state = 'succeeded'), "
    "  count(*) FILTER (WHERE d.execution_state = 'failed'), "
    "  count(*) FILTER (WHERE d.execution_state = 'skipped'), "
    "  count(*) FILTER (WHERE d.execution_state = 'lost'), "
    "  coalesce(sum(d.items), 0) "
    "FROM runs r JOIN dispatches d ON d.run_id = r.id WHERE r.id = ANY(%s) "
    "GROUP BY r.id ORDER BY r.id"
)


def _completions(conn: psycopg.Connection[Any], run_ids: Sequence[int]) -> list[RunCompletion]:
    if not run_ids:
        return []
    rows = conn.execute(_COMPLETION_EVENTS, (list(run_ids),)).fetchall()
    return [
        RunCompletion(
            run_id=int(r[0]),
            subscription_id=str(r[1]),
            slot=r[2],
            reason=str(r[3]),
            succeeded=bool(r[4]),
            completed_at=r[5],
            counts=OutcomeCounts(int(r[6]), int(r[7]), int(r[8]), int(r[9])),
            items=int(r[10]),
        )
        for r in rows
    ]


# One conditional write (shared/outcomes.py): the report's columns replace the row's only when
# its precedence key is greater; attempts and first start aggregate on their own (max, min).
_WINS = '(d.outcome_key IS NULL OR %(key)s::text COLLATE "C" > d.outcome_key)'
_ERROR_WINS = (
    "(%(error_key)s::text IS NOT NULL AND "
    '(d.error_key IS NULL OR %(error_key)s::text COLLATE "C" > d.error_key))'
)
_RECORD_OUTCOME = (
    "UPDATE dispatches d SET "
    "state = 'created', created_at = coalesce(d.created_at, now()), updated_at = now(), "
    "execution_attempts = greatest(d.execution_attempts, %(attempt)s), "
    "first_started_at = least(d.first_started_at, %(started_at)s), "
    f"execution_state = CASE WHEN {_WINS} THEN %(state)s ELSE d.execution_state END, "
    f"execution_final = CASE WHEN {_WINS} THEN %(final)s ELSE d.execution_final END, "
    f"finished_at = CASE WHEN {_WINS} THEN %(finished_at)s ELSE d.finished_at END, "
    f"duration_ms = CASE WHEN {_WINS} THEN %(duration_ms)s ELSE d.duration_ms END, "
    f"items = CASE WHEN {_WINS} THEN %(items)s ELSE d.items END, "
    f"reported_at = CASE WHEN {_WINS} THEN %(reported_at)s ELSE d.reported_at END, "
    f"outcome_key = CASE WHEN {_WINS} THEN %(key)s ELSE d.outcome_key END, "
    f"execution_error = CASE WHEN {_ERROR_WINS} THEN %(error)s ELSE d.execution_error END, "
    f"error_key = CASE WHEN {_ERROR_WINS} THEN %(error_key)s ELSE d.error_key END "
    "WHERE d.id = %(id)s "
    "RETURNING d.execution_state, d.execution_final, d.execution_attempts"
)


def _outcome_params(dispatch_id: int, report: Report, step: Transition) -> dict[str, Any]:
    return {
        "id": dispatch_id,
        "key": step.key,
        "error_key": step.error_key,
        "state": step.state,
        "final": step.final,
        "attempt": report.attempt,
        "started_at": report.started_at,
        "finished_at": report.reported_at if step.final else None,
        "duration_ms": report.duration_ms,
        "items": report.items,
        "reported_at": report.reported_at,
        "error": None if report.error is None else report.error[:MAX_ERROR_CHARS],
    }


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise LedgerError(f"{what} must be timezone-aware, got naive {value.isoformat()}")


def _json_default(value: object) -> object:
    # Firestore hands back datetimes (DatetimeWithNanoseconds); JSON has no such type.
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot store {type(value).__name__} in the mirror document")


# fanout's two statements take their rows as one JSON text, not one array per column: psycopg
# dumps a str in one step, while each list goes through ListDumper's inspection (element type,
# dimensions, None) on every call, about a quarter of the two calls' client CPU in a profile.
# ensure_ascii=False: non-ASCII goes as UTF-8, as in the arrays. The encoder is built once:
# json.dumps with any non-default option builds a JSONEncoder on every call.
_json_param: Callable[[object], str] = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":")
).encode


def _dumps(obj: object) -> str:
    return json.dumps(obj, default=_json_default, sort_keys=True)
