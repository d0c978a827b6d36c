"""The migration runner against a real PostgreSQL: Flyway's history table, idempotence, refusals,
and two runners at once."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.ledger.migrate import MigrationError, default_migrations_dir, main, migrate

pytestmark = pytest.mark.integration


def _history(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT installed_rank, version, description, type, script, checksum, installed_by, "
            "execution_time, success FROM flyway_schema_history ORDER BY installed_rank"
        ).fetchall()


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchall()
    return {str(r[0]) for r in rows}


@pytest.fixture
def migrations(tmp_path: Path) -> Path:
    """A private copy of the project's first migration that a test may edit and add to.

    Only V1: these tests exercise the runner with versions of their own from V2 on.
    """
    target = tmp_path / "migrations"
    target.mkdir()
    shutil.copy(default_migrations_dir() / "V1__create_ledger.sql", target)
    return target


def test_applies_the_ledger_and_records_flyway_history(fresh_database: str) -> None:
    assert migrate(fresh_database) == ["1", "2", "3"]
    assert {
        "runs",
        "dispatches",
        "subscriptions_mirror",
        "run_overview",
        "email_deliveries",
    } <= _tables(fresh_database)
    first, second, third = _history(fresh_database)
    assert second[:5] == (2, "2", "task outcomes", "SQL", "V2__task_outcomes.sql")
    assert third[:5] == (3, "3", "email deliveries", "SQL", "V3__email_deliveries.sql")
    (rank, version, description, kind, script, checksum, by, ms, success) = first
    assert (rank, version, description, kind, script) == (
        1,
        "1",
        "create ledger",
        "SQL",
        "V1__create_ledger.sql",
    )
    assert isinstance(checksum, int) and checksum != 0
    assert by == "postgres"
    assert ms >= 0
    assert success is True


def test_history_table_has_flyways_columns(fresh_database: str) -> None:
    migrate(fresh_database)
    with psycopg.connect(fresh_database) as conn:
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_name = 'flyway_schema_history' ORDER BY ordinal_position"
        ).fetchall()
    assert columns == [
        ("installed_rank", "integer", "NO"),
        ("version", "character varying", "YES"),
        ("description", "character varying", "NO"),
        ("type", "character varying", "NO"),
        ("script", "character varying", "NO"),
        ("checksum", "integer", "YES"),
        ("installed_by", "character varying", "NO"),
        ("installed_on", "timestamp without time zone", "NO"),
        ("execution_time", "integer", "NO"),
        ("success", "boolean", "NO"),
    ]


def test_second_run_applies_nothing(fresh_database: str) -> None:
    assert migrate(fresh_database) == ["1", "2", "3"]
    first = _history(fresh_database)
    assert migrate(fresh_database) == []
    assert _history(fresh_database) == first


def test_pending_migrations_apply_in_numeric_version_order(
    fresh_database: str, migrations: Path
) -> None:
    # V10 needs V2's table: applied in file-name order (V10 < V2) it would fail.
    (migrations / "V2__widgets.sql").write_text("CREATE TABLE widgets (id int PRIMARY KEY);\n")
    (migrations / "V10__widget_names.sql").write_text("ALTER TABLE widgets ADD COLUMN name text;\n")
    (migrations / "V1_1__gadgets.sql").write_text("CREATE TABLE gadgets (id int);\n")
    assert migrate(fresh_database, migrations) == ["1", "1.1", "2", "10"]
    assert [row[1] for row in _history(fresh_database)] == ["1", "1.1", "2", "10"]
    assert [row[0] for row in _history(fresh_database)] == [1, 2, 3, 4]


def test_new_migration_is_applied_on_top(fresh_database: str, migrations: Path) -> None:
    assert migrate(fresh_database, migrations) == ["1"]
    (migrations / "V2__widgets.sql").write_text("CREATE TABLE widgets (id int);\n")
    assert migrate(fresh_database, migrations) == ["2"]
    assert "widgets" in _tables(fresh_database)


def test_changed_migration_is_refused(fresh_database: str, migrations: Path) -> None:
    migrate(fresh_database, migrations)
    (migrations / "V2__widgets.sql").write_text("CREATE TABLE widgets (id int);\n")
    v1 = migrations / "V1__create_ledger.sql"
    v1.write_text(v1.read_text() + "CREATE TABLE sneaky (id int);\n")
    with pytest.raises(MigrationError, match=r"V1__create_ledger\.sql was changed"):
        migrate(fresh_database, migrations)
    # Refused before anything ran: the new V2 was not applied either.
    assert "widgets" not in _tables(fresh_database)
    assert len(_history(fresh_database)) == 1


def test_line_ending_changes_are_not_a_change(fresh_database: str, migrations: Path) -> None:
    migrate(fresh_database, migrations)
    v1 = migrations / "V1__create_ledger.sql"
    v1.write_bytes(v1.read_bytes().replace(b"\n", b"\r\n") + b"\r\n\r\n")
    assert migrate(fresh_database, migrations) == []


def test_missing_applied_file_is_refused(fresh_database: str, migrations: Path) -> None:
    (migrations / "V2__widgets.sql").write_text("CREATE TABLE widgets (id int);\n")
    migrate(fresh_database, migrations)
    (migrations / "V2__widgets.sql").unlink()
    with pytest.raises(MigrationError, match=r"version 2 \(V2__widgets\.sql\) is applied but its"):
        migrate(fresh_database, migrations)


def test_unapplied_older_version_is_refused(fresh_database: str, migrations: Path) -> None:
    (migrations / "V3__widgets.sql").write_text("CREATE TABLE widgets (id int);\n")
    migrate(fresh_database, migrations)
    (migrations / "V2__late.sql").write_text("CREATE TABLE late (id int);\n")
    with pytest.raises(MigrationError, match=r"V2__late\.sql is older than the newest"):
        migrate(fresh_database, migrations)


def test_failing_migration_rolls_back_entirely(fresh_database: str, migrations: Path) -> None:
    (migrations / "V2__half.sql").write_text(
        "CREATE TABLE half_done (id int);\nINSERT INTO no_such_table VALUES (1);\n"
    )
    with pytest.raises(MigrationError, match=r"V2__half\.sql failed and was rolled back"):
        migrate(fresh_database, migrations)
    # V1 committed in its own transaction; nothing of V2 remains, and no history row claims it.
    assert "runs" in _tables(fresh_database)
    assert "half_done" not in _tables(fresh_database)
    assert [row[1] for row in _history(fresh_database)] == ["1"]


def test_concurrent_runners_are_serialised(fresh_database: str, migrations: Path) -> None:
    # A slow migration widens the window: without the advisory lock both runners would see an
    # empty history, both run V1, and the loser would fail on "relation already exists".
    v1 = migrations / "V1__create_ledger.sql"
    v1.write_text("SELECT pg_sleep(0.5);\n" + v1.read_text())
    barrier = threading.Barrier(2)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(migrate(fresh_database, migrations))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(results) == [[], ["1"]]
    assert [row[1] for row in _history(fresh_database)] == ["1"]


def test_command_line_entry(fresh_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([fresh_database]) == 0
    assert capsys.readouterr().out.strip() == "applied: 1, 2, 3"
    assert main([fresh_database]) == 0
    assert capsys.readouterr().out.strip() == "up to date"


def test_command_line_reports_refusal_without_traceback(
    fresh_database: str, migrations: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    migrate(fresh_database, migrations)
    (migrations / "V1__create_ledger.sql").write_text("-- emptied\n")
    assert main([fresh_database, "--dir", str(migrations)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("migrate: refusing to migrate")
    assert "Traceback" not in err
