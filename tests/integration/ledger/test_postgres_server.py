"""The project's own PostgreSQL server: reachable, reusable, and gone without a trace on stop."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import psycopg
import pytest

from emulators.postgres import PostgresServer, stop_cluster
from emulators.process import StackError, stat_fields
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration


def _running(pid: int) -> bool:
    """Whether /proc shows ``pid`` as a live (non-zombie) process."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def test_serves_the_database_on_loopback_and_stops_without_leftovers(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path / "pg")
    server.start()
    try:
        assert server.database_url == f"postgresql://postgres@127.0.0.1:{server.port}/dispatcher"
        with psycopg.connect(server.database_url) as conn:
            settings = conn.execute(
                "SELECT current_database(), current_setting('listen_addresses'), "
                "current_setting('fsync'), current_setting('synchronous_commit'), "
                "current_setting('server_version_num')::int / 10000"
            ).fetchone()
        assert settings == ("dispatcher", "127.0.0.1", "off", "off", 15)
        # A client still connected at stop: its backend must go too.
        held = psycopg.connect(server.database_url)
        pids = server.pids()
        # postmaster, checkpointer, background writer, walwriter, autovacuum and logical
        # replication launchers, and the held backend.
        assert len(pids) >= 7
        assert all(_running(pid) for pid in pids)
    finally:
        server.stop()
    assert [pid for pid in pids if _running(pid)] == []
    assert server.pids() == []
    held.close()


def test_restart_reuses_the_data_directory(tmp_path: Path) -> None:
    state = tmp_path / "pg"
    with PostgresServer(state) as first:
        assert first.timings["initdb"] > 0
        with psycopg.connect(first.database_url) as conn:
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
    with PostgresServer(state) as second:
        assert second.timings["initdb"] == 0.0
        with psycopg.connect(second.database_url) as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("still here",)]


def test_stop_reaps_children_after_the_postmaster_was_killed(tmp_path: Path) -> None:
    # Each postgres child leads its own process group, so a group kill of the postmaster's group
    # alone would leave them behind; stop() must find and end them.
    server = PostgresServer(tmp_path / "pg")
    server.start()
    held = psycopg.connect(server.database_url)
    pids = server.pids()
    try:
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: not _running(pids[0]) or None, timeout=10, message="postmaster death")
    finally:
        server.stop(timeout=5)
    assert [pid for pid in pids if _running(pid)] == []
    held.close()
    # The stale postmaster.pid and the crashed cluster do not prevent the next start.
    with PostgresServer(tmp_path / "pg") as again, psycopg.connect(again.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_stop_cluster_works_without_the_server_object(tmp_path: Path) -> None:
    # What `stack down` in another shell does: only the data directory is known.
    server = PostgresServer(tmp_path / "pg")
    server.start()
    held = psycopg.connect(server.database_url)
    pids = server.pids()
    try:
        assert stop_cluster(server.data_dir)
        assert [pid for pid in pids if _running(pid)] == []
        assert not stop_cluster(server.data_dir)
    finally:
        server.stop()
        held.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to the postgres user")
def test_unreachable_state_dir_outside_tmp_is_refused(tmp_path: Path) -> None:
    # A 0700 directory outside the temp dir is never loosened; /dev/shm stands in for such a place.
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm")
    private = shm / f"ledger-test-{os.getpid()}"
    private.mkdir(mode=0o700)
    try:
        with pytest.raises(StackError, match="cannot enter"):
            PostgresServer(private / "pg").start()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
    finally:
        for path in sorted(private.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        private.rmdir()
