"""Apply the SQL migrations in ``migrations/`` and record them exactly as Flyway would.

Production runs the Flyway CLI; the local stack, the tests and small deployments run this module.
Either can take over from the other because this runner writes Flyway's own
``flyway_schema_history`` table (same columns, same ``description``/``script``/``type`` values and
the same checksum), and refuses to run when what is recorded no longer matches the files.

Flyway's checksum of a SQL migration (``ChecksumCalculator.calculateChecksumForResource`` in
flyway-core 9-11; ``AbstractLoadableResource.checksum`` before): read the file as text with a
``BufferedReader``, strip a byte-order mark from the first line, and feed the UTF-8 bytes of every
line *without its terminator* (``\\n``, ``\\r\\n`` or ``\\r``) into one ``java.util.zip.CRC32``; the
result is the CRC cast to a signed 32-bit int. Line endings and blank lines therefore never change
the checksum; any other character does.

Usage: ``python -m shared.ledger.migrate DATABASE_URL [--dir MIGRATIONS_DIR]``.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import class_row

logger = logging.getLogger(__name__)

HISTORY_TABLE = "flyway_schema_history"
# Session advisory lock key held while migrating ("dispatch" + "migrate" in ASCII, truncated):
# any fixed number works, it only has to be the same for every runner of this project.
ADVISORY_LOCK_KEY = 0x64697370617463
DEFAULT_LOCK_TIMEOUT_S = 120.0

# Flyway's versioned SQL migration: V<version>__<description>.sql, version parts separated by "."
# or "_" (V1_1 and V1.1 are the same version, recorded as "1.1").
_FILENAME = re.compile(r"^V(?P<version>\d+(?:[._]\d+)*)__(?P<description>.+)\.sql$")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# The table Flyway (PostgreSQL dialect) creates, column for column, so that the Flyway CLI reads
# our rows as its own.
_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS {table} (
    installed_rank integer                 NOT NULL,
    version        varchar(50),
    description    varchar(200)            NOT NULL,
    type           varchar(20)             NOT NULL,
    script         varchar(1000)           NOT NULL,
    checksum       integer,
    installed_by   varchar(100)            NOT NULL,
    installed_on   timestamp               NOT NULL DEFAULT now(),
    execution_time integer                 NOT NULL,
    success        boolean                 NOT NULL,
    CONSTRAINT {pk} PRIMARY KEY (installed_rank)
);
CREATE INDEX IF NOT EXISTS {index} ON {table} (success);
"""


class MigrationError(RuntimeError):
    """The database and the migration files disagree, or a migration failed; nothing more ran."""


@dataclass(frozen=True)
class Migration:
    """One ``V<version>__<description>.sql`` file."""

    version: str
    description: str
    script: str
    path: Path
    checksum: int

    @property
    def sort_key(self) -> tuple[int, ...]:
        return version_key(self.version)


@dataclass(frozen=True)
class AppliedMigration:
    """One row of ``flyway_schema_history``."""

    installed_rank: int
    version: str | None
    description: str
    type: str
    script: str
    checksum: int | None
    success: bool


def default_migrations_dir() -> Path:
    """``migrations/`` at the repository root (beside the ``shared`` package)."""
    return Path(__file__).resolve().parents[2] / "migrations"


def flyway_checksum(content: str) -> int:
    """Flyway's checksum of a SQL migration's text (see the module docstring)."""
    lines = _LINE_BREAK.split(content)
    if lines and lines[0].startswith("\ufeff"):
        lines[0] = lines[0][1:]
    crc = 0
    for line in lines:
        # Java's BufferedReader yields no final empty line after a trailing newline; an empty
        # line adds no bytes to the CRC, so splitting on every terminator gives the same value.
        crc = zlib.crc32(line.encode("utf-8"), crc)
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def version_key(version: str) -> tuple[int, ...]:
    """Flyway's version order: numeric parts, trailing zeros ignored (1.0 == 1)."""
    parts = [int(part) for part in version.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def discover(directory: Path) -> list[Migration]:
    """The versioned migrations in ``directory``, in version order.

    Raises MigrationError for a ``V`` file that does not follow Flyway's naming, a duplicate
    version, or a file that is not UTF-8.
    """
    if not directory.is_dir():
        raise MigrationError(f"migrations directory {directory} does not exist")
    found: dict[tuple[int, ...], Migration] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not path.name.startswith("V"):
            continue
        match = _FILENAME.match(path.name)
        if match is None:
            raise MigrationError(
                f"{path.name}: not a Flyway versioned migration name "
                "(V<version>__<description>.sql)"
            )
        try:
            content = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MigrationError(f"{path.name}: not valid UTF-8 ({exc})") from exc
        migration = Migration(
            version=match["version"].replace("_", "."),
            description=match["description"].replace("_", " "),
            script=path.name,
            path=path,
            checksum=flyway_checksum(content),
        )
        key = migration.sort_key
        if key in found:
            raise MigrationError(
                f"{path.name} and {found[key].script} have the same version {migration.version}"
            )
        found[key] = migration
    return [found[key] for key in sorted(found)]


def migrate(
    conninfo: str,
    directory: Path | None = None,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> list[str]:
    """Apply every pending migration, in version order, one transaction each.

    Returns the versions applied by this call (empty when the database was up to date). Holds a
    session advisory lock for the whole run, so concurrent runners queue up and the later ones
    find nothing left to do. Refuses (MigrationError, nothing applied) when an applied migration's
    file is missing, its checksum or description changed, a failed migration is recorded, or a
    file older than the newest applied version was never applied.
    """
    migrations = discover(directory or default_migrations_dir())
    applied_now: list[str] = []
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout * 1000)}ms"))
        )
        try:
            conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        except psycopg.errors.LockNotAvailable as exc:
            raise MigrationError(
                f"another migration runner held the lock for more than {lock_timeout:.0f}s"
            ) from exc
        # The timeout was for the runner lock only; a migration's own lock waits are its business.
        conn.execute("RESET lock_timeout")
        try:
            _ensure_history_table(conn)
            applied = _read_history(conn)
            pending = _validate(migrations, applied)
            installed_by = _current_user(conn)
            for migration in pending:
                _apply(conn, migration, installed_by)
                applied_now.append(migration.version)
        finally:
            # Closing the session would release it too; unlocking explicitly keeps a pooled or
            # reused connection from carrying the lock away.
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
    return applied_now


def _ensure_history_table(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    statement = sql.SQL(_CREATE_HISTORY).format(
        table=sql.Identifier(HISTORY_TABLE),
        pk=sql.Identifier(f"{HISTORY_TABLE}_pk"),
        index=sql.Identifier(f"{HISTORY_TABLE}_s_idx"),
    )
    with conn.transaction():
        conn.execute(statement)


def _read_history(conn: psycopg.Connection[tuple[object, ...]]) -> list[AppliedMigration]:
    with conn.cursor(row_factory=class_row(AppliedMigration)) as cur:
        cur.execute(
            sql.SQL(
                "SELECT installed_rank, version, description, type, script, checksum, success "
                "FROM {} ORDER BY installed_rank"
            ).format(sql.Identifier(HISTORY_TABLE))
        )
        return cur.fetchall()


def _validate(
    migrations: Sequence[Migration], applied: Sequence[AppliedMigration]
) -> list[Migration]:
    """Check the recorded history against the files; return the migrations still to apply."""
    by_key = {migration.sort_key: migration for migration in migrations}
    problems: list[str] = []
    applied_keys: set[tuple[int, ...]] = set()
    for row in applied:
        if row.version is None:
            # Flyway's own markers (SCHEMA, BASELINE without version) and repeatables: not ours.
            continue
        if not row.success:
            problems.append(
                f"version {row.version} ({row.script}) is recorded as failed; fix the database "
                f"by hand and delete that row from {HISTORY_TABLE} (or run `flyway repair`)"
            )
            continue
        key = version_key(row.version)
        applied_keys.add(key)
        if row.type in {"BASELINE", "SCHEMA"}:
            continue
        migration = by_key.get(key)
        if migration is None:
            problems.append(
                f"version {row.version} ({row.script}) is applied but its file is missing"
            )
            continue
        if row.checksum != migration.checksum:
            problems.append(
                f"version {row.version}: {migration.script} was changed after it was applied "
                f"(checksum in database {row.checksum}, file {migration.checksum}); restore the "
                "file and put the change in a new migration"
            )
        if row.description != migration.description:
            problems.append(
                f"version {row.version}: description in database {row.description!r}, "
                f"file says {migration.description!r}"
            )
    newest = max(applied_keys, default=None)
    pending = [m for m in migrations if m.sort_key not in applied_keys]
    if newest is not None:
        for migration in pending:
            if migration.sort_key < newest:
                problems.append(
                    f"{migration.script} is older than the newest applied version and was never "
                    "applied; give it a version above the newest one"
                )
    if problems:
        raise MigrationError("refusing to migrate:\n  " + "\n  ".join(problems))
    return pending


def _current_user(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    row = conn.execute("SELECT current_user").fetchone()
    return str(row[0]) if row is not None else "unknown"


def _apply(
    conn: psycopg.Connection[tuple[object, ...]], migration: Migration, installed_by: str
) -> None:
    script = migration.path.read_text(encoding="utf-8")
    started = time.monotonic()
    try:
        with conn.transaction():
            # No parameters: psycopg sends the script as one simple query, so a file may hold
            # many statements; they commit together or not at all.
            conn.execute(script.encode("utf-8"))
            elapsed_ms = int((time.monotonic() - started) * 1000)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (installed_rank, version, description, type, script, "
                    "checksum, installed_by, execution_time, success) "
                    "SELECT coalesce(max(installed_rank), 0) + 1, %s, %s, 'SQL', %s, %s, %s, %s, "
                    "true FROM {}"
                ).format(sql.Identifier(HISTORY_TABLE), sql.Identifier(HISTORY_TABLE)),
                (
                    migration.version,
                    migration.description,
                    migration.script,
                    migration.checksum,
                    installed_by,
                    elapsed_ms,
                ),
            )
    except psycopg.Error as exc:
        raise MigrationError(
            f"{migration.script} failed and was rolled back: {exc.__class__.__name__}: {exc}"
        ) from exc
    logger.info(
        "applied migration",
        extra={"version": migration.version, "script": migration.script, "ms": elapsed_ms},
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m shared.ledger.migrate DATABASE_URL``: 0 when up to date, 1 on refusal."""
    parser = argparse.ArgumentParser(
        prog="python -m shared.ledger.migrate",
        description="Apply pending Flyway-named migrations, recorded in flyway_schema_history.",
    )
    parser.add_argument("database_url", help="e.g. postgresql://postgres@127.0.0.1:5432/dispatcher")
    parser.add_argument("--dir", type=Path, default=None, help="migrations directory")
    args = parser.parse_args(argv)
    try:
        applied = migrate(args.database_url, args.dir)
    except (MigrationError, psycopg.OperationalError) as exc:
        print(f"migrate: {exc}", file=sys.stderr)
        return 1
    if applied:
        print("applied: " + ", ".join(applied))
    else:
        print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
