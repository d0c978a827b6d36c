"""The local stack: every real part of the pipeline on loopback, started and stopped by us.

Components (each in its own process group, each with a log under ``<state>/logs/``):
``pubsub`` and ``firestore`` (the gcloud emulators), ``cloudtasks`` (emulators/cloudtasks),
``postgres`` (a real PostgreSQL 15 server), ``collector`` (a stub recording every task),
``fn-select``, ``fn-fanout``, ``fn-maintenance``, ``fn-sync`` (the functions under
functions-framework, reached by push subscriptions built from topics.yaml) and ``scheduler``
(the local stand-in for Cloud Scheduler).

``<state>/stack.json`` records what runs (pids, ports, logs), so ``stack status`` and
``stack down`` work from any process; ``<state>/stack.env`` holds the ``export`` lines that point
the CLI and plain ``gcloud`` at the stack.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from emulators.postgres import PostgresServer, stop_cluster
from emulators.process import (
    ManagedProcess,
    StackError,
    free_port,
    group_members,
    http_ready,
    pid_alive,
    port_is_free,
    stop_tree,
    tail,
    tcp_ready,
)
from shared.config import load_settings
from shared.paths import project_root
from shared.topology import FUNCTION_NAMES, load_topology

HOST = "127.0.0.1"
DEFAULT_PROJECT = "dispatcher-local"
EMULATOR_COMPONENTS = ("pubsub", "firestore", "cloudtasks", "postgres", "collector", "smtp-sink")
# Functions that are HTTP targets of Cloud Tasks rather than push targets in topics.yaml.
TASK_FUNCTIONS = ("deliver",)
SERVED_FUNCTIONS = (*FUNCTION_NAMES, *TASK_FUNCTIONS)
PORTED_COMPONENTS = (
    *EMULATOR_COMPONENTS,
    "cloudtasks-http",
    "smtp-sink-http",
    *(f"fn-{f}" for f in SERVED_FUNCTIONS),
)
# Stop the producers first so nothing pushes into a component that is already gone.
STOP_ORDER = (
    "scheduler",
    *(f"fn-{f}" for f in SERVED_FUNCTIONS),
    "collector",
    "smtp-sink",
    "cloudtasks",
    "pubsub",
    "firestore",
    "postgres",
)


def default_state_dir() -> Path:
    return project_root() / ".dispatcher"


@dataclass
class StackOptions:
    state_dir: Path = field(default_factory=default_state_dir)
    project: str = DEFAULT_PROJECT
    ports: Mapping[str, int] = field(default_factory=dict)
    scheduler: bool = True
    # topics.yaml's `local.retry` instead of production backoff, so redelivery takes seconds.
    fast_retries: bool = True
    startup_timeout: float = 90.0
    # Extra environment for the four functions (e.g. shorter dependency budgets in fault tests).
    function_env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ComponentStatus:
    name: str
    pid: int
    alive: bool
    ready: bool
    url: str
    log: str


class LocalStack:
    """Start, describe and stop the local stack rooted at ``options.state_dir``."""

    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.state_dir = self.options.state_dir.absolute()
        self.logs_dir = self.state_dir / "logs"
        self.ports: dict[str, int] = {}
        self.processes: dict[str, ManagedProcess] = {}
        self._record: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.timings: dict[str, float] = {}
        self._postgres: PostgresServer | None = None

    # -- paths -----------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def env_path(self) -> Path:
        return self.state_dir / "stack.env"

    @property
    def collector_records(self) -> Path:
        return self.state_dir / "collector.jsonl"

    @property
    def smtp_records(self) -> Path:
        """Every message the SMTP sink accepted, one JSON line each (the local mailbox)."""
        return self.state_dir / "smtp-sink.jsonl"

    # -- up --------------------------------------------------------------------------------
    def up(self) -> dict[str, str]:
        """Start everything, wait until ready, apply topics and queues; return the stack env.

        On any failure, everything already started is stopped again before the error is raised.
        """
        started = time.monotonic()
        self._refuse_if_running()
        self._allocate_ports()
        shutil.rmtree(self.logs_dir, ignore_errors=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        # Like the logs, what the collector and the SMTP sink received belongs to one stack's
        # life: a second demo must not show the first one's tasks and emails as its own.
        for records in (self.collector_records, self.smtp_records):
            records.unlink(missing_ok=True)
        self._record = {
            "project": self.options.project,
            "started_at": _now(),
            "state_dir": str(self.state_dir),
            "components": {},
        }
        env = self.environment()
        try:
            self._start_backends(env)
            self._start_functions(env)
            self._wait_ready([n for n in self.processes if n != "postgres"])
            self._provision(env)
            if self.options.scheduler:
                self._start(
                    "scheduler",
                    [sys.executable, "-m", "emulators.scheduler"],
                    env,
                    ready=lambda: True,
                )
        except BaseException:
            self.stop_started()
            raise
        self.timings["up"] = time.monotonic() - started
        self._record["env"] = env
        self._record["ready_at"] = _now()
        self._write_record()
        self.env_path.write_text(render_env(env))
        return env

    def environment(self) -> dict[str, str]:
        """The variables that point clients, functions and gcloud at this stack."""
        p = self.ports
        pubsub = f"{HOST}:{p['pubsub']}"
        return {
            "GOOGLE_CLOUD_PROJECT": self.options.project,
            "DISPATCHER_ENV": "local",
            "DISPATCHER_STATE_DIR": str(self.state_dir),
            "PUBSUB_EMULATOR_HOST": pubsub,
            "FIRESTORE_EMULATOR_HOST": f"{HOST}:{p['firestore']}",
            "CLOUD_TASKS_EMULATOR_HOST": f"{HOST}:{p['cloudtasks']}",
            "CLOUD_TASKS_EMULATOR_HTTP": f"http://{HOST}:{p['cloudtasks-http']}",
            "DISPATCHER_OIDC_CERTS_URL": f"http://{HOST}:{p['cloudtasks-http']}/certs",
            "DATABASE_URL": f"postgresql://postgres@{HOST}:{p['postgres']}/dispatcher",
            "COLLECTOR_URL": f"http://{HOST}:{p['collector']}/collect",
            # The SMTP sink: where the deliver function sends, and where people look.
            "DISPATCHER_SMTP_HOST": HOST,
            "DISPATCHER_SMTP_PORT": str(p["smtp-sink"]),
            "SMTP_SINK_URL": f"http://{HOST}:{p['smtp-sink-http']}",
            "DISPATCHER_DELIVER_URL": f"http://{HOST}:{p['fn-deliver']}/",
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB": f"http://{pubsub}/",
            "CLOUDSDK_AUTH_DISABLE_CREDENTIALS": "true",
            "CLOUDSDK_CORE_PROJECT": self.options.project,
        }

    def _refuse_if_running(self) -> None:
        record = read_record(self.state_dir)
        if record is None:
            return
        alive = [name for name, c in record.get("components", {}).items() if pid_alive(c["pid"])]
        if alive:
            raise StackError(
                f"a stack is already running from {self.state_dir} ({', '.join(alive)}); "
                "run `dispatcher stack down` first, or pass another --state-dir"
            )

    def _allocate_ports(self) -> None:
        for name in PORTED_COMPONENTS:
            requested = self.options.ports.get(name)
            if requested is not None:
                if not port_is_free(requested, HOST):
                    raise StackError(
                        f"port {requested} for {name} is already in use on {HOST}; "
                        "free it or choose another port"
                    )
                self.ports[name] = requested
        taken = set(self.ports.values())
        for name in PORTED_COMPONENTS:
            while name not in self.ports:
                port = free_port(HOST)
                if port not in taken:
                    self.ports[name] = port
                    taken.add(port)

    def _start_backends(self, env: dict[str, str]) -> None:
        p = self.ports
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise StackError("gcloud is not on PATH: the Pub/Sub and Firestore emulators need it")
        pubsub_data = self.state_dir / "pubsub"
        pubsub_data.mkdir(parents=True, exist_ok=True)
        self._start(
            "pubsub",
            [
                gcloud,
                "beta",
                "emulators",
                "pubsub",
                "start",
                f"--host-port={HOST}:{p['pubsub']}",
                f"--project={self.options.project}",
                f"--data-dir={pubsub_data}",
            ],
            env,
            ready=http_ready(f"http://{HOST}:{p['pubsub']}/"),
        )
        self._start(
            "firestore",
            [gcloud, "emulators", "firestore", "start", f"--host-port={HOST}:{p['firestore']}"],
            env,
            ready=http_ready(f"http://{HOST}:{p['firestore']}/"),
        )
        self._start(
            "cloudtasks",
            [
                sys.executable,
                "-m",
                "emulators.cloudtasks",
                "--host",
                HOST,
                "--port",
                str(p["cloudtasks"]),
                "--http-port",
                str(p["cloudtasks-http"]),
            ],
            env,
            ready=http_ready(f"http://{HOST}:{p['cloudtasks-http']}/healthz"),
        )
        self._start(
            "collector",
            [
                sys.executable,
                "-m",
                "emulators.collector",
                "--host",
                HOST,
                "--port",
                str(p["collector"]),
                "--record-file",
                str(self.collector_records),
                # Verification on, as in production, against the Cloud Tasks emulator's keys.
                "--certs-url",
                env["DISPATCHER_OIDC_CERTS_URL"],
                "--service-account",
                load_settings(environ=env).collector_service_account,
            ],
            env,
            ready=http_ready(f"http://{HOST}:{p['collector']}/healthz"),
        )
        self._start(
            "smtp-sink",
            [
                sys.executable,
                "-m",
                "emulators.smtp_sink",
                "--host",
                HOST,
                "--port",
                str(p["smtp-sink"]),
                "--http-port",
                str(p["smtp-sink-http"]),
                "--record-file",
                str(self.smtp_records),
            ],
            env,
            ready=http_ready(f"http://{HOST}:{p['smtp-sink-http']}/healthz"),
        )
        self._start_postgres()

    def _start_postgres(self) -> None:
        server = PostgresServer(
            self._postgres_dir(),
            port=self.ports["postgres"],
            log_path=self.logs_dir / "postgres.log",
            startup_timeout=self.options.startup_timeout,
        )
        server.start()
        self._postgres = server
        self.timings["postgres"] = server.timings.get("total", 0.0)
        process = server.process
        with self._lock:
            self.processes["postgres"] = process
            self._record["components"]["postgres"] = {
                "pid": process.pid,
                "port": self.ports["postgres"],
                "log": str(process.log_path),
                "url": server.database_url,
                "stop_signal": int(signal.SIGINT),
                "data_dir": str(server.data_dir),
            }
            self._write_record()

    def _postgres_dir(self) -> Path:
        """Where PostgreSQL keeps its data: inside the state dir when the server can reach it.

        As root the server runs as the unprivileged ``postgres`` user, which cannot enter a
        0700 directory such as pytest's tmp dirs or a checkout under /root; then the data goes
        to a directory under the system temp dir named after the state dir, so it is still
        reused by the next ``stack up`` from the same state dir.
        """
        inside = self.state_dir / "postgres"
        if os.geteuid() != 0 or all(
            p.stat().st_mode & stat.S_IXOTH for p in [self.state_dir, *self.state_dir.parents]
        ):
            return inside
        digest = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"dispatcher-postgres-{digest}"

    def _start_functions(self, env: dict[str, str]) -> None:
        framework = shutil.which("functions-framework", path=str(Path(sys.executable).parent))
        if framework is None:
            raise StackError("functions-framework is not installed in this environment")
        for function in SERVED_FUNCTIONS:
            name = f"fn-{function}"
            port = self.ports[name]
            # gunicorn (under functions-framework) puts its control socket in XDG_RUNTIME_DIR,
            # else ~/.gunicorn/gunicorn.ctl: four functions sharing that one path collide.
            runtime_dir = self.state_dir / "run" / name
            runtime_dir.mkdir(parents=True, exist_ok=True)
            self._start(
                name,
                [
                    framework,
                    "--source",
                    str(project_root() / "functions" / function / "main.py"),
                    "--target",
                    "handle",
                    "--signature-type",
                    "http",
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                ],
                # Threads let one function instance take concurrent pushes, as Cloud Run does.
                {
                    **env,
                    **self.options.function_env,
                    "THREADS": "8",
                    "XDG_RUNTIME_DIR": str(runtime_dir),
                },
                ready=http_ready(f"http://{HOST}:{port}/", expect_status=None),
            )

    def _start(
        self, name: str, argv: list[str], env: Mapping[str, str], ready: Callable[[], bool]
    ) -> None:
        process = ManagedProcess(
            name=name,
            argv=argv,
            log_path=self.logs_dir / f"{name}.log",
            ready=ready,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=project_root(),
            startup_timeout=self.options.startup_timeout,
        )
        process.start()
        with self._lock:
            self.processes[name] = process
            port = self.ports.get(name)
            self._record["components"][name] = {
                "pid": process.pid,
                "port": port,
                "log": str(process.log_path),
                "url": (f"smtp://{HOST}:{port}" if name == "smtp-sink" else f"http://{HOST}:{port}")
                if port
                else "",
            }
            self._write_record()

    def _wait_ready(self, names: list[str]) -> None:
        for name in names:
            began = time.monotonic()
            self.processes[name].wait_ready()
            self.timings[name] = time.monotonic() - began

    def _provision(self, env: Mapping[str, str]) -> None:
        """Ledger migrations, Pub/Sub topics from topics.yaml, Cloud Tasks queues from app.toml."""
        from shared.ledger.migrate import migrate

        migrate(env["DATABASE_URL"])
        with environment(env):
            import google.cloud.pubsub_v1 as pubsub_v1

            from shared.pubsub_admin import apply_topology

            topology = load_topology()
            endpoints = {f: f"http://{HOST}:{self.ports[f'fn-{f}']}/" for f in FUNCTION_NAMES}
            publisher = pubsub_v1.PublisherClient()
            subscriber = pubsub_v1.SubscriberClient()
            try:
                apply_topology(
                    topology,
                    self.options.project,
                    endpoints,
                    publisher=publisher,
                    subscriber=subscriber,
                    retry_override=topology.local_retry if self.options.fast_retries else None,
                )
            finally:
                subscriber.close()
                publisher.transport.close()
            apply_local_queues(env)

    def component_pids(self, name: str) -> list[int]:
        """Every live process of one component (benchmarks account CPU per component).

        A process group covers each component except PostgreSQL, whose children ``setsid()``
        away from it and are found through the data directory instead.
        """
        if name == "postgres" and self._postgres is not None:
            return self._postgres.pids()
        return group_members(self.processes[name].pid)

    def stop_component(self, name: str) -> None:
        """Stop one component (fault tests: a dependency goes away mid-run)."""
        if name == "postgres" and self._postgres is not None:
            # PostgresServer.stop also ends the children that setsid() away from the group.
            self._postgres.stop()
            return
        self.processes[name].stop()

    def restart_component(self, name: str) -> None:
        """Start a stopped component again on the same port with the same arguments."""
        if name == "postgres":
            self._start_postgres()
            return
        old = self.processes[name]
        if old.popen is not None and old.popen.poll() is None:
            raise StackError(f"{name} is still running")
        self._start(name, list(old.argv), old.env, old.ready)
        self.processes[name].wait_ready()

    def _write_record(self) -> None:
        _write_record_file(self.state_dir, self._record)

    # -- down / status ----------------------------------------------------------------------
    def stop_started(self) -> None:
        """Stop what this object started (failure during ``up``, or foreground Ctrl-C)."""
        stop_recorded(self.state_dir)

    def status(self) -> list[ComponentStatus]:
        return stack_status(self.state_dir)


def apply_local_queues(env: Mapping[str, str], client: Any = None) -> None:
    """Create (or update) every queue the stack has: each source kind's shards and the email
    queue, which is not a source kind (app.toml ``[email]``) but has the same limits shape.
    Whoever resets the Cloud Tasks emulator must call this, not ``apply_queues`` alone."""
    from dataclasses import replace

    from shared.email_settings import load_email_settings
    from shared.tasks_admin import apply_queues

    settings = load_settings(environ=env)
    apply_queues(settings, client)
    email = load_email_settings(environ=env).queue_config()
    apply_queues(replace(settings, queues={email.kind: email}), client)


def _now() -> str:
    return datetime.now(UTC).isoformat()


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Set ``env`` in ``os.environ`` inside the block (Google clients read it), then restore."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def render_env(env: Mapping[str, str]) -> str:
    lines = ["# Written by `dispatcher stack up`; `source` it to talk to the local stack."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    return "\n".join(lines) + "\n"


def read_record(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_record_file(state_dir: Path, record: Mapping[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "stack.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(state_dir / "stack.json")


def stop_recorded(state_dir: Path, timeout: float = 15.0) -> list[str]:
    """Stop every component recorded in ``state_dir``; return the names that were running."""
    record = read_record(state_dir)
    if record is None:
        return []
    components: dict[str, Any] = record.get("components", {})
    stopped: list[str] = []
    order = [n for n in STOP_ORDER if n in components] + [
        n for n in components if n not in STOP_ORDER
    ]
    for name in order:
        info = components[name]
        pid = int(info["pid"])
        if pid_alive(pid):
            stopped.append(name)
        stop_tree(pid, timeout, int(info.get("stop_signal", signal.SIGTERM)))
        if "data_dir" in info:
            # PostgreSQL's children leave the process group and outlive a killed postmaster;
            # they are found by their working directory, the data dir.
            stop_cluster(Path(info["data_dir"]), timeout)
    (state_dir / "stack.env").unlink(missing_ok=True)
    record["stopped_at"] = _now()
    _write_record_file(state_dir, record)
    return stopped


def stack_status(state_dir: Path) -> list[ComponentStatus]:
    record = read_record(state_dir)
    if record is None or "stopped_at" in record:
        return []
    result = []
    for name, info in record.get("components", {}).items():
        alive = pid_alive(int(info["pid"]))
        port = info.get("port")
        ready = alive and (tcp_ready(HOST, int(port))() if port else True)
        result.append(
            ComponentStatus(
                name,
                int(info["pid"]),
                alive,
                ready,
                str(info.get("url", "")),
                str(info.get("log", "")),
            )
        )
    return result


def component_log(state_dir: Path, component: str | None, lines: int) -> str:
    logs = state_dir / "logs"
    if component is None:
        parts = [f"==> {path.stem} <==\n{tail(path, lines)}" for path in sorted(logs.glob("*.log"))]
        return "\n\n".join(parts)
    path = logs / f"{component}.log"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in logs.glob("*.log"))) or "none"
        raise StackError(f"no log for component {component!r} (known: {known})")
    return tail(path, lines)
