"""A real PostgreSQL server for the ledger tests: started once per session, migrated, and wiped
between tests. Migration-runner tests get a brand-new database each instead."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from emulators.postgres import PostgresServer
from shared.ledger.migrate import migrate
from shared.ledger.repository import Ledger, open_pool

LEDGER_TABLES = ("dispatches", "runs", "subscriptions_mirror", "email_deliveries")


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_path_factory.mktemp("ledger-pg"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(pg_server: PostgresServer) -> str:
    """The session database, migrated to the newest version."""
    migrate(pg_server.database_url)
    return pg_server.database_url


@pytest.fixture(scope="session")
def ledger_pool(database_url: str) -> Iterator[ConnectionPool[psycopg.Connection[Any]]]:
    # Big enough for the concurrency tests' threads to hold a connection each.
    pool = open_pool(database_url, min_size=1, max_size=24)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def ledger(
    ledger_pool: ConnectionPool[psycopg.Connection[Any]], database_url: str
) -> Iterator[Ledger]:
    """A Ledger on empty tables."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(t) for t in LEDGER_TABLES)
            )
        )
    yield Ledger(ledger_pool)


@pytest.fixture
def sql_conn(database_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    """A plain autocommit connection for arranging and inspecting rows behind the Ledger's back."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def fresh_database(pg_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database on the session server (dropped afterwards)."""
    name = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_server.database_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(pg_server.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
