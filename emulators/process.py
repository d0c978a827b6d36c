"""Child processes of the local stack: own process group, log file, readiness polling, teardown.

Every child is started in its own session (``start_new_session=True``) so that signalling its
process group also reaches grandchildren: the gcloud emulator wrappers start a Java child that
survives if only the wrapper is killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests


class StackError(RuntimeError):
    """A local stack component failed to start, or the stack is in a state we refuse to touch."""


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_ready(url: str, expect_status: int | None = 200) -> Callable[[], bool]:
    def check() -> bool:
        try:
            response = requests.get(url, timeout=1.0)
        except requests.RequestException:
            return False
        return expect_status is None or response.status_code == expect_status

    return check


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0); /proc tells the truth.
    fields = stat_fields(pid)
    return fields is None or fields[0] != "Z"


def stat_fields(pid: int, proc: Path = Path("/proc")) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, or ``None`` if it is gone.

    Index 0 is the state, 1 the parent pid, 2 the process group, 11 and 12 user and system
    CPU ticks. The command name may hold spaces and parentheses, hence the split after the
    last ``)``.
    """
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    _, closing, rest = text.rpartition(")")
    return rest.split() if closing else None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(pid_alive(pid) for pid in group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """Pids whose process group is ``pgid`` (Linux /proc)."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        with contextlib.suppress(IndexError, ValueError):
            if fields is not None and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def stop_group(pgid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal the whole group (SIGTERM by default), wait, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.05)


@dataclass
class ManagedProcess:
    """One stack component: a command, its log file and a readiness check."""

    name: str
    argv: Sequence[str]
    log_path: Path
    ready: Callable[[], bool]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout: float = 60.0
    # PostgreSQL wants SIGINT (fast shutdown); SIGTERM waits for every client to disconnect.
    stop_signal: int = signal.SIGTERM
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.popen = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            raise StackError(f"{self.name}: cannot start {self.argv[0]!r}: {exc}") from exc
        finally:
            log.close()

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise StackError(f"{self.name} was never started")
        return self.popen.pid

    def wait_ready(self) -> None:
        """Poll the readiness check until it passes, the process dies, or the timeout runs out."""
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {self.popen.returncode} during startup; "
                    f"last log lines:\n{tail(self.log_path)}"
                )
            if self.ready():
                return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise StackError(
            f"{self.name} was not ready after {self.startup_timeout:.0f}s; "
            f"last log lines:\n{tail(self.log_path)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        stop_group(self.popen.pid, timeout, self.stop_signal)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=1.0)


def tail(path: Path, lines: int = 20) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(content[-lines:])


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc), found through parent pids."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        with contextlib.suppress(IndexError, ValueError):
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def stop_tree(pid: int, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Stop a component started in its own session, from any process (``stack down``).

    Signals the process group, as :func:`stop_group` does, and also reaps descendants that left
    the group (PostgreSQL's children each call setsid()).
    """
    tree = {pid, *group_members(pid), *descendants(pid)}
    stop_group(pid, timeout, sig)
    for leftover in tree:
        if pid_alive(leftover):
            with contextlib.suppress(ProcessLookupError):
                os.kill(leftover, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and any(pid_alive(p) for p in tree):
        time.sleep(0.05)
