"""A throwaway PostgreSQL 15 server for the local stack and the integration tests.

Started from the installed server binaries (``pg_config --bindir``), no docker. The data directory
lives in a state directory the caller owns; it is reused on the next start (no second ``initdb``),
so ``stack up`` after ``stack down`` is quick and keeps the ledger.

initdb and postgres refuse to run as root. Under root (our CI, these machines) both run as the
unprivileged ``postgres`` system user through ``setpriv``: setpriv changes uid/gid and then *execs*
the server, so the pid ManagedProcess holds is the postmaster itself.

Process groups are not enough here: every postgres child (checkpointer, walwriter, each backend)
calls ``setsid()`` and leads its own group, so ``ManagedProcess.stop()`` alone (a group kill)
would miss them if the postmaster had to be SIGKILLed. ``pids()`` lists the postmaster and its
children, and ``stop()`` makes sure every one of them is gone.

Durability is switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): this server
holds test and demo data only, and the settings make it several times faster on small disks.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from emulators.process import ManagedProcess, StackError, free_port, pid_alive

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
DATABASE = "dispatcher"
SUPERUSER = "postgres"
UNPRIVILEGED_USER = "postgres"
# A unix socket path may be at most 107 bytes (sun_path); ".s.PGSQL.NNNNN" takes 15 of them.
_MAX_SOCKET_DIR = 90


def find_bindir() -> Path:
    """Where the PostgreSQL server binaries are: ``pg_config --bindir``, else the Debian path."""
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            # Debian's /usr/bin/pg_config belongs to libpq-dev and may point at /usr/bin, which
            # has no initdb; only trust it when the server binaries are really there.
            if out and (Path(out) / "initdb").exists():
                return Path(out)
    if (DEFAULT_BINDIR / "initdb").exists():
        return DEFAULT_BINDIR
    raise StackError(
        "PostgreSQL server binaries not found (pg_config --bindir has no initdb, "
        f"and {DEFAULT_BINDIR} does not exist); install postgresql-15"
    )


class PostgresServer:
    """One PostgreSQL server on 127.0.0.1 with a ``dispatcher`` database.

    ``state_dir`` holds ``data/`` (PGDATA) and ``socket/`` (the unix socket); the log goes to
    ``log_path`` (default ``state_dir/postgres.log``). Authentication is ``trust`` on loopback only:
    this server must never hold anything real.
    """

    def __init__(
        self,
        state_dir: Path,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        bindir: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.data_dir = self.state_dir / "data"
        self.log_path = log_path if log_path is not None else self.state_dir / "postgres.log"
        self._requested_port = port
        self._bindir = bindir
        self._startup_timeout = startup_timeout
        self._port: int | None = None
        self._socket_dir: Path | None = None
        self._process: ManagedProcess | None = None
        # Timings of the last start(), in seconds: "initdb" (0.0 when the data dir was reused),
        # "ready" (postmaster accepting connections) and "total" (database created too).
        self.timings: dict[str, float] = {}

    # -- public interface ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise StackError("postgres was never started")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def database_url(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/dispatcher`` (trust auth, no password)."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{DATABASE}"

    @property
    def admin_url(self) -> str:
        """The maintenance database ``postgres``, for creating and dropping databases."""
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/postgres"

    @property
    def process(self) -> ManagedProcess:
        if self._process is None:
            raise StackError("postgres was never started")
        return self._process

    @property
    def running(self) -> bool:
        return (
            self._process is not None
            and self._process.popen is not None
            and (self._process.popen.poll() is None)
        )

    def start(self) -> None:
        """initdb if needed, start the postmaster, wait until it answers, create the database.

        Returns only when ``database_url`` accepts connections.
        """
        if self.running:
            raise StackError("postgres is already running")
        started = time.monotonic()
        bindir = self._bindir or find_bindir()
        user = self._run_as()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._check_reachable(user)
        self._clear_stale_pidfile()

        initdb_started = time.monotonic()
        if (self.data_dir / "PG_VERSION").exists():
            self.timings["initdb"] = 0.0
        else:
            self._initdb(bindir, user)
            self.timings["initdb"] = time.monotonic() - initdb_started

        self._port = self._requested_port or free_port(self.host)
        self._socket_dir = self._make_socket_dir(user)
        argv = [
            *self._as_user(user),
            str(bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self._port),
            "-c",
            f"listen_addresses={self.host}",
            "-c",
            f"unix_socket_directories={self._socket_dir}",
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
            # Log lines name the client, so a test's stray query can be traced in postgres.log.
            "-c",
            "log_line_prefix=%m [%p] %u@%d ",
        ]
        self._process = ManagedProcess(
            name="postgres",
            argv=argv,
            log_path=self.log_path,
            ready=self._accepts_connections,
            startup_timeout=self._startup_timeout,
        )
        self._process.start()
        try:
            self._process.wait_ready()
            self.timings["ready"] = time.monotonic() - started
            self._create_database()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - started

    def pids(self) -> list[int]:
        """Every live process of this cluster: the postmaster first, then its children.

        Found by working directory (postgres and all its children run in the data directory),
        not by parent pid: children orphaned by a killed postmaster are re-parented to init,
        and each child leads its own process group, so neither ppid nor pgid would find them.
        """
        found = _processes_in(self.data_dir.resolve())
        postmaster = self._process.popen.pid if self._process and self._process.popen else None
        if postmaster in found:
            found.remove(postmaster)
            found.insert(0, postmaster)
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGINT: abort open transactions, disconnect clients), then make sure
        the postmaster and every child of it are gone.

        SIGTERM would be a *smart* shutdown, which waits for every client (an idle pool, say) to
        disconnect and so would end in SIGKILL and a crash recovery on the next start.
        """
        process = self._process
        if process is None or process.popen is None:
            return
        popen = process.popen
        cluster = self.pids()
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(popen.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=timeout)
        # After a clean fast shutdown the children are already gone (the postmaster waits for
        # them). If it hung, ManagedProcess.stop() SIGKILLs it; orphaned children notice the
        # postmaster's death and exit by themselves, and whatever has not after ``timeout`` is
        # killed one by one.
        process.stop(timeout=timeout)
        _end_all(self.data_dir.resolve(), cluster, timeout)
        if self._socket_dir is not None and not self._socket_dir.is_relative_to(self.state_dir):
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -------------------------------------------------------------------------

    @staticmethod
    def _run_as() -> pwd.struct_passwd | None:
        """The user the server runs as: ``postgres`` when we are root, else ourselves (None)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(UNPRIVILEGED_USER)
        except KeyError as exc:
            raise StackError(
                f"running as root, and PostgreSQL refuses root; create the system user "
                f"{UNPRIVILEGED_USER!r} (Debian's postgresql package does) or run as another user"
            ) from exc

    @staticmethod
    def _as_user(user: pwd.struct_passwd | None) -> list[str]:
        if user is None:
            return []
        # setpriv execs (no fork), so the pid we hold is the postmaster's and the process group
        # semantics of ManagedProcess stay intact.
        return [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            "--init-groups",
            "--",
        ]

    def _check_reachable(self, user: pwd.struct_passwd | None) -> None:
        """Make sure the unprivileged user can reach the state dir, then give it the state dir.

        pytest's ``tmp_path`` sits under ``/tmp/pytest-of-root``, mode 0700: below the system temp
        dir we add the search bit (traverse only, no listing) to such parents; anywhere else we
        refuse with an explanation rather than loosen permissions the user chose.
        """
        if user is None:
            return
        temp_root = Path(tempfile.gettempdir()).resolve()
        for parent in reversed(self.state_dir.resolve().parents):
            st = parent.stat()
            if st.st_uid == user.pw_uid:
                continue
            if st.st_gid == user.pw_gid and st.st_mode & stat.S_IXGRP:
                continue
            if st.st_mode & stat.S_IXOTH:
                continue
            if parent.is_relative_to(temp_root) and st.st_uid == os.geteuid():
                os.chmod(parent, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
                continue
            raise StackError(
                f"user {user.pw_name!r} cannot enter {parent} (mode {stat.filemode(st.st_mode)}), "
                f"so PostgreSQL cannot use {self.state_dir}; choose a state dir under a "
                "world-traversable directory (the repository's .dispatcher/, or /tmp)"
            )
        _chown_tree(self.state_dir, user)

    def _clear_stale_pidfile(self) -> None:
        """A SIGKILLed postmaster leaves postmaster.pid; postgres itself copes unless the pid was
        reused by another process, so drop the file when that pid is clearly not a postmaster."""
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return
        if pid_alive(pid):
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"postgres" in cmdline and str(self.data_dir).encode() in cmdline:
                    raise StackError(
                        f"a postgres (pid {pid}) is already running on {self.data_dir}"
                    )
            return
        pidfile.unlink(missing_ok=True)

    def _initdb(self, bindir: Path, user: pwd.struct_passwd | None) -> None:
        # A half-written data dir from an interrupted initdb would make initdb refuse.
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(mode=0o700)
        if user is not None:
            os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        argv = [
            *self._as_user(user),
            str(bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            # Skips the fsync of the fresh cluster: about half of initdb's time on slow disks.
            "--no-sync",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                result = subprocess.run(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    timeout=120,
                    check=False,
                    # initdb runs as another user: a cwd it cannot read makes it warn and fail.
                    cwd="/",
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise StackError(f"initdb failed: {exc}") from exc
        if result.returncode != 0:
            raise StackError(f"initdb exited with code {result.returncode}; see {self.log_path}")

    def _make_socket_dir(self, user: pwd.struct_passwd | None) -> Path:
        wanted = self.state_dir / "socket"
        if len(str(wanted)) <= _MAX_SOCKET_DIR:
            wanted.mkdir(exist_ok=True)
            socket_dir = wanted
        else:
            # Deep state dirs (pytest's tmp paths) overflow sun_path; fall back to a short dir,
            # removed again by stop().
            socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-"))
        if user is not None:
            os.chown(socket_dir, user.pw_uid, user.pw_gid)
        return socket_dir

    def _connect(self, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            connect_timeout=2,
            autocommit=True,
        )

    def _accepts_connections(self) -> bool:
        # A port that answers is not enough: during startup and recovery the server accepts TCP
        # and then refuses with "the database system is starting up".
        try:
            with self._connect("postgres") as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _create_database(self) -> None:
        with self._connect("postgres") as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))


def stop_cluster(data_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the PostgreSQL cluster running on ``data_dir`` from any process (``stack down`` in a
    later shell holds no PostgresServer object). Returns whether a cluster was running.

    Fast shutdown of the postmaster named in ``postmaster.pid``, then every process still
    working in the data directory is waited for and, after ``timeout``, killed.
    """
    data_dir = Path(data_dir).resolve()
    cluster = _processes_in(data_dir)
    try:
        postmaster = int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        postmaster = None
    if postmaster is not None and postmaster in cluster:
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster, signal.SIGINT)
    _end_all(data_dir, cluster, timeout)
    return bool(cluster)


def _processes_in(cwd: Path) -> list[int]:
    """Live processes whose working directory is ``cwd`` (Linux /proc), in pid order."""
    found: list[int] = []
    target = str(cwd)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") == target and pid_alive(int(entry.name)):
                found.append(int(entry.name))
    return sorted(found)


def _end_all(cwd: Path, known: list[int], timeout: float) -> None:
    def survivors() -> list[int]:
        return sorted(
            {pid for pid in known if pid_alive(pid) and _runs_in(pid, cwd)}
            | set(_processes_in(cwd))
        )

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and survivors():
        time.sleep(0.05)
    for pid in survivors():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and survivors():
        time.sleep(0.05)


def _runs_in(pid: int, cwd: Path) -> bool:
    # Also guards against a recycled pid: only processes still in our data dir are signalled.
    try:
        return os.readlink(f"/proc/{pid}/cwd") == str(cwd)
    except OSError:
        return False


def _chown_tree(root: Path, user: pwd.struct_passwd) -> None:
    """Give the state dir to the server's user, skipping what it already owns (fast on reuse)."""
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):
            st = path.lstat()
            if st.st_uid != user.pw_uid or st.st_gid != user.pw_gid:
                os.lchown(path, user.pw_uid, user.pw_gid)
