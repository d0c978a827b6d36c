"""A collector stub built on the worker kit: executes the tasks Cloud Tasks dispatches, records
every request, and reports each task's outcome on ``dispatcher-results`` as a real collector does.

Each request is appended as one JSON line (method, path, headers, body, received_at, ``auth``
when tokens are verified, the HTTP ``status`` answered, and the kit's ``decision`` and
``outcome``) to the record file, flushed before the response, so the CLI and tests can read what
arrived even after a crash. ``GET /requests`` returns the records; ``DELETE /requests`` clears
them.

The task itself goes through :class:`shared.worker.TaskWorker`: with ``--certs-url`` the OIDC
token is verified as a production collector must (audience = the URL it was called on, issuer
Google, and with ``--service-account`` the task's identity; a bad token is answered 401 and
recorded as refused); the body is validated; the subscription is re-read when
``FIRESTORE_EMULATOR_HOST`` is set and the ledger asked whether the dispatch already succeeded
when ``DATABASE_URL`` is set (the startup line says which checks are on); the outcome is
published when ``PUBSUB_EMULATOR_HOST`` is set. "Collecting" finds nothing and succeeds.

``POST /control`` changes how the stub behaves (every key optional, the others are kept):

* ``fail_status`` / ``fail_count``: the next ``fail_count`` collections fail with that status
  (a 4xx/5xx; default 500), reported as ``failed``;
* ``report_outcomes`` (default true): false collects but publishes nothing (a lost outcome);
* ``result_copies`` (default 1): publish every outcome message that many times;
* ``report_started`` (default false): publish ``started`` before collecting;
* ``shuffle_results`` (default false): with ``report_started``, hold the copies of ``started``
  back and publish them with the final outcome's copies in a random order (the final outcome
  possibly first).

Run: ``python -m emulators.collector --port 8090 --record-file .dispatcher/collector.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flask
from werkzeug.serving import BaseWSGIServer, make_server

from emulators.recorder_http import ControlError, recorder_app
from shared.config import Env
from shared.dal.records import OutboundMessage
from shared.worker import (
    CollectorTask,
    CollectResult,
    ResultPublisher,
    RetryableCollectError,
    TaskWorker,
    WorkerConfig,
    WorkerDependencies,
    WorkerReply,
    load_worker_config,
)

logger = logging.getLogger("emulators.collector")


@dataclass(frozen=True)
class Controls:
    """What ``POST /control`` set; replaced whole, so a request sees one consistent plan."""

    fail_status: int = 500
    fail_remaining: int = 0
    report_outcomes: bool = True
    result_copies: int = 1
    shuffle_results: bool = False
    report_started: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The plan as ``POST /control`` answers it."""
        return {
            "fail_status": self.fail_status,
            "fail_remaining": self.fail_remaining,
            "report_outcomes": self.report_outcomes,
            "result_copies": self.result_copies,
            "shuffle_results": self.shuffle_results,
            "report_started": self.report_started,
        }


def parse_controls(current: Controls, plan: Mapping[str, Any]) -> Controls:
    """``current`` with the keys of ``plan`` applied; :class:`ControlError` for bad values."""
    known = set(current.as_dict()) | {"fail_count"}
    unknown = sorted(set(plan) - known)
    if unknown:
        raise ControlError(f"unknown control(s) {unknown}; known: {sorted(known)}")
    changes: dict[str, Any] = {}
    if "fail_status" in plan or "fail_count" in plan:
        status = _integer(plan, "fail_status", 500)
        if not 400 <= status <= 599:
            raise ControlError("fail_status must be a 4xx or 5xx status (Cloud Tasks retries it)")
        changes["fail_status"] = status
        changes["fail_remaining"] = max(_integer(plan, "fail_count", 0), 0)
    for name in ("report_outcomes", "shuffle_results", "report_started"):
        if name in plan:
            if not isinstance(plan[name], bool):
                raise ControlError(f"{name} must be true or false")
            changes[name] = plan[name]
    if "result_copies" in plan:
        copies = _integer(plan, "result_copies", 1)
        if not 1 <= copies <= 100:
            raise ControlError("result_copies must be between 1 and 100")
        changes["result_copies"] = copies
    return replace(current, **changes)


def _integer(plan: Mapping[str, Any], name: str, default: int) -> int:
    value = plan.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ControlError(f"{name} must be an integer")
    return value


class CollectorState:
    """Recorded requests, the controls and the worker, shared by the handler threads."""

    def __init__(self, record_file: Path) -> None:
        self.record_file = record_file
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.controls = Controls()
        self._worker: TaskWorker | None = None
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.touch()

    def install(self, worker: TaskWorker) -> None:
        """Execute tasks with ``worker`` (its publisher reads this state's controls)."""
        with self.lock:
            self._worker = worker

    def worker(self) -> TaskWorker:
        """The worker for the current controls (``report_started`` is the worker's setting)."""
        with self.lock:
            if self._worker is None:
                raise RuntimeError("no worker installed")
            wanted = self.controls.report_started
            if self._worker.config.report_started != wanted:
                config = replace(self._worker.config, report_started=wanted)
                self._worker = TaskWorker(self._worker.collect, config, self._worker.deps)
            return self._worker

    def take_failure(self) -> int | None:
        """The status the next collection fails with, or ``None`` (consumes one failure)."""
        with self.lock:
            if self.controls.fail_remaining <= 0:
                return None
            self.controls = replace(self.controls, fail_remaining=self.controls.fail_remaining - 1)
            return self.controls.fail_status

    def record(self, entry: dict[str, Any]) -> None:
        """Store a request (with the answer it got) in memory and in the record file."""
        with self.lock:
            self.records.append(entry)
            with self.record_file.open("a") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")

    def clear(self) -> None:
        """Forget every record."""
        with self.lock:
            self.records.clear()
            self.record_file.write_text("")

    def snapshot(self) -> list[dict[str, Any]]:
        """The records so far."""
        with self.lock:
            return list(self.records)

    def apply_controls(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a ``POST /control`` plan; the controls now in force."""
        with self.lock:
            self.controls = parse_controls(self.controls, plan)
            return self.controls.as_dict()


class StubPublisher:
    """Publishes outcomes as the controls say: dropped, copied, or shuffled with ``started``."""

    def __init__(self, inner: ResultPublisher | None, state: CollectorState) -> None:
        self._inner = inner
        self._state = state
        self._held: dict[tuple[str, ...], list[OutboundMessage]] = {}
        self._lock = threading.Lock()

    def publish(self, message: OutboundMessage) -> str:
        """Publish (or hold, or drop) ``message``; raise what the real publisher raises."""
        with self._state.lock:
            controls = self._state.controls
        if not controls.report_outcomes or self._inner is None:
            return "not-published"
        batch = [message] * controls.result_copies
        if controls.shuffle_results and controls.report_started:
            attempt = _attempt_of(message)
            if message.attributes.get("outcome") == "started":
                with self._lock:
                    self._held.setdefault(attempt, []).extend(batch)
                return "held"
            with self._lock:
                batch = self._held.pop(attempt, []) + batch
            random.shuffle(batch)
        ids = [self._inner.publish(m) for m in batch]
        return ids[-1]


def _attempt_of(message: OutboundMessage) -> tuple[str, ...]:
    payload = json.loads(message.data)
    key = payload["dispatch_key"]
    return (key["subscription_id"], key["slot"], key["source_id"], str(payload.get("attempt", 1)))


def make_app(state: CollectorState) -> flask.Flask:
    """The stub's HTTP surface: health, records, controls, and tasks on any other POST path."""
    app = recorder_app(
        "collector-stub",
        "/requests",
        records=state.snapshot,
        clear=state.clear,
        apply_controls=state.apply_controls,
    )

    @app.post("/")
    @app.post("/<path:_path>")
    def task(_path: str = "") -> flask.Response:
        received_at = datetime.now(UTC).isoformat()
        reply = state.worker().handle(flask.request)
        state.record(_entry(flask.request, reply, received_at))
        return reply.to_response()

    return app


def _entry(request: flask.Request, reply: WorkerReply, received_at: str) -> dict[str, Any]:
    raw = request.get_data(cache=True)
    try:
        body: Any = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    query = request.query_string.decode(errors="replace")
    entry: dict[str, Any] = {
        "method": request.method,
        "path": f"{request.path}?{query}" if query else request.path,
        "headers": {k.lower(): v for k, v in request.headers.items()},
        "body": body,
        "received_at": received_at,
        "status": reply.status,
        "decision": reply.decision,
        "outcome": reply.outcome,
    }
    if reply.auth.verified is not None:
        entry["auth"] = reply.auth.as_record()
    return entry


def stub_config(
    environ: Mapping[str, str], certs_url: str | None, service_account: str | None
) -> WorkerConfig:
    """The kit's configuration for the stub: checks on only where the stack provides them."""
    config = load_worker_config(
        environ,
        verify_token=certs_url is not None,
        service_account=service_account,
        # The URL each task was sent to, as fanout asks Cloud Tasks to sign it.
        audience=None,
        check_subscription=bool(environ.get(Env.FIRESTORE_EMULATOR_HOST)),
    )
    return replace(config, certs_url=certs_url) if certs_url else config


def serve(
    host: str,
    port: int,
    record_file: Path,
    certs_url: str | None = None,
    service_account: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    dependencies: WorkerDependencies | None = None,
) -> BaseWSGIServer:
    """Create (not start) the collector server; call ``serve_forever`` on it.

    ``dependencies`` replaces the real ones (tests); its publisher is still wrapped by the
    controls. Without ``PUBSUB_EMULATOR_HOST`` outcomes are not published at all: a stub run by
    hand must never publish to a real project.
    """
    environ = os.environ if environ is None else environ
    config = stub_config(environ, certs_url, service_account)
    real = dependencies or WorkerDependencies.from_config(config)
    inner = real.publisher if dependencies or environ.get(Env.PUBSUB_EMULATOR_HOST) else None

    def collect(task: CollectorTask) -> CollectResult:
        status = state.take_failure()
        if status is not None:
            raise RetryableCollectError(f"failure injected by /control ({status})", status=status)
        return CollectResult(items=0)

    state = CollectorState(record_file)
    deps = replace(real, publisher=StubPublisher(inner, state))
    state.install(TaskWorker(collect, config, deps))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one decision line per task is enough
    server = make_server(host, port, make_app(state), threaded=True)
    logger.info(
        "collector listening on http://%s:%d",
        host,
        server.server_port,
        extra={
            "url": f"http://{host}:{server.server_port}",
            "verify_token": config.verify_token,
            "ledger_check": "on" if deps.ledger is not None else "off (no DATABASE_URL)",
            "subscription_check": (
                "on" if deps.subscriptions is not None else "off (no FIRESTORE_EMULATOR_HOST)"
            ),
            "outcomes": (
                f"published to {config.results_topic}"
                if inner is not None
                else "not published (no PUBSUB_EMULATOR_HOST)"
            ),
        },
    )
    return server


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, serve until interrupted."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--record-file", type=Path, default=Path(".dispatcher/collector.jsonl"))
    parser.add_argument("--certs-url", help="verify task OIDC tokens against these certificates")
    parser.add_argument("--service-account", help="the identity task tokens must carry")
    args = parser.parse_args(argv)
    from shared.logs import setup_logging

    setup_logging(os.environ.get(Env.LOG_LEVEL) or "INFO")
    server = serve(args.host, args.port, args.record_file, args.certs_url, args.service_account)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
