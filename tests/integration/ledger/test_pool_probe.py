"""The ledger pool probes a connection only after it sat idle (real PostgreSQL).

A thawed serverless instance must not hand out a connection the server closed meanwhile, but a
busy fanout must not pay a probe round trip on every ledger call either.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from shared.ledger.repository import Ledger, ProbeIfIdle, open_pool

pytestmark = pytest.mark.integration

SLOT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def probe(clock: FakeClock) -> ProbeIfIdle:
    return ProbeIfIdle(idle_seconds=5.0, clock=clock)


@pytest.fixture
def one_connection_pool(
    database_url: str, probe: ProbeIfIdle
) -> Iterator[ConnectionPool[psycopg.Connection[Any]]]:
    # One connection, so the test knows which one every call gets.
    pool = open_pool(database_url, min_size=1, max_size=1, probe=probe)
    pool.open(wait=True)
    try:
        yield pool
    finally:
        pool.close()


def backend_pid(ledger: Ledger) -> int:
    with ledger.pool.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def terminate(sql_conn: psycopg.Connection[tuple[Any, ...]], pid: int) -> None:
    sql_conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def test_back_to_back_calls_are_not_probed(
    ledger: Ledger,  # empties the tables
    one_connection_pool: ConnectionPool[psycopg.Connection[Any]],
    probe: ProbeIfIdle,
) -> None:
    busy = Ledger(one_connection_pool)
    busy.record_run("probe-a", SLOT, "schedule")
    first = probe.probes  # the new connection was never returned: probed once

    for _ in range(5):
        busy.record_run("probe-a", SLOT, "schedule")

    assert first == 1
    assert probe.probes == first


def test_a_connection_closed_while_idle_is_replaced_before_use(
    ledger: Ledger,
    one_connection_pool: ConnectionPool[psycopg.Connection[Any]],
    probe: ProbeIfIdle,
    clock: FakeClock,
    sql_conn: psycopg.Connection[tuple[Any, ...]],
) -> None:
    thawed = Ledger(one_connection_pool)
    dead = backend_pid(thawed)
    terminate(sql_conn, dead)
    clock.now += 6.0  # idle longer than the threshold

    run = thawed.record_run("probe-b", SLOT, "schedule")

    assert run.recorded
    assert backend_pid(thawed) != dead


def test_a_connection_closed_under_a_busy_pool_fails_one_call_then_is_replaced(
    ledger: Ledger,
    one_connection_pool: ConnectionPool[psycopg.Connection[Any]],
    sql_conn: psycopg.Connection[tuple[Any, ...]],
) -> None:
    busy = Ledger(one_connection_pool)
    dead = backend_pid(busy)
    terminate(sql_conn, dead)

    # The documented trade-off: not probed, so this call fails (fanout answers 5xx, Pub/Sub
    # redelivers) and the pool discards the broken connection.
    with pytest.raises(psycopg.OperationalError):
        busy.record_run("probe-c", SLOT, "schedule")

    assert busy.record_run("probe-c", SLOT, "schedule").recorded
    assert backend_pid(busy) != dead
