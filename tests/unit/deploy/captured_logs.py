"""Real log lines of the functions, as Cloud Logging stores them, for checking monitoring filters.

Each scenario runs the production code path -- shared.handler.process_message around the real
select_due / fanout use cases, and reconcile -- against the in-memory fakes the core tests use,
with shared.logs' own formatter. Each JSON line is then turned into the LogEntry Cloud Run
writes: special fields lifted out (severity, time, logging.googleapis.com/*), the rest as
jsonPayload, and the resource a gen2 function logs under (cloud_run_revision, its service named
dispatcher-<function> as functions.tf names it).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from shared import topology
from shared.config import load_settings
from shared.dal.records import DigestSchedule, OutboundMessage, StoredSubscription
from shared.dispatch_key import DispatchKey, task_name
from shared.email_settings import load_email_settings
from shared.errors import RetryableError, TaskRejectedError
from shared.handler import Route, process_message
from shared.ledger.repository import LostDispatch, OutcomeRecorded, RunCompletion
from shared.logs import CloudLoggingFormatter
from shared.ops.reconcile import reconcile
from shared.ops.settle_outcomes import settle_outcomes
from shared.usecases.fanout import FanoutDependencies, fanout
from shared.usecases.plan_deliveries import PlanDependencies
from shared.usecases.results import ResultsDependencies, record_result
from shared.usecases.select_digests import DigestDependencies
from shared.usecases.select_due import SelectDependencies, select_due
from tests.support.core import subscription_doc, utc
from tests.unit.core.fakes import (
    FakeLedger,
    FakePublisher,
    FakeSubscriptionStore,
    FakeTasks,
    message,
)
from tests.unit.deliveries.fakes import FakeSubscriptions
from tests.unit.deliveries.fakes import FakeTasks as DigestTasks
from tests.unit.deliveries.test_deliver_use_case import subscription
from tests.unit.deliveries.test_select_digests import FakeSchedules

LogEntry = dict[str, Any]

SLOT = utc("2026-01-05T09:00")
NOW = SLOT + timedelta(seconds=3)
SOURCES = [
    {"id": "reuters", "kind": "rss", "params": {"url": "https://example.com/r.xml"}},
    {"id": "newsapi", "kind": "news-api", "params": {"q": "acme"}},
]
# Lifted out of the JSON line into the LogEntry itself (Cloud Logging's structured logging).
_SPECIAL_PREFIX = "logging.googleapis.com/"
_SPECIAL = {"severity", "time", "httpRequest"}


class _DeadLetters:
    """Accepts every dead letter, as Pub/Sub would."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        self.published.append((topic, data))
        return f"dlq-{len(self.published)}"


def _route(topic_name: str) -> Route:
    spec = topology.load_topology().topic(topic_name)
    return Route(
        topic=spec.name,
        function=spec.push.function,
        schema=spec.schema,
        dead_letter_topic=spec.dead_letter_topic,
        max_payload_bytes=256 * 1024,
    )


def to_log_entry(line: str, function: str) -> LogEntry:
    """One stdout JSON line of function ``function`` as the LogEntry Cloud Logging stores."""
    fields = json.loads(line)
    entry: LogEntry = {
        "severity": fields.get("severity", "DEFAULT"),
        "labels": fields.get(f"{_SPECIAL_PREFIX}labels", {}),
        "resource": {
            "type": "cloud_run_revision",
            "labels": {"service_name": f"dispatcher-{function}"},
        },
        "jsonPayload": {
            k: v
            for k, v in fields.items()
            if k not in _SPECIAL and not k.startswith(_SPECIAL_PREFIX)
        },
    }
    return entry


@contextmanager
def _stdout_lines() -> Iterator[io.StringIO]:
    """Everything logged inside the block, formatted by shared.logs as the functions do."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(CloudLoggingFormatter("dispatcher-test"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _store() -> FakeSubscriptionStore:
    store = FakeSubscriptionStore()
    store.put(
        "acme",
        subscription_doc(
            "acme", schedule={"every": 300}, start=SLOT, shard_count=4, sources=SOURCES
        ),
    )
    return store


def _push(payload: Mapping[str, Any], message_id: str) -> Any:
    return message(message_id, data=json.dumps(payload).encode())


def capture() -> list[LogEntry]:
    """Run every scenario once and return all its log entries, in order."""
    entries: list[LogEntry] = []
    dead_letters = _DeadLetters()
    settings = load_settings(
        environ={"COLLECTOR_URL": "http://collector.test/collect"}, shard_count=4
    )

    def run(function: str, scenario: Any) -> None:
        # The handler logs its retry decision and re-raises, as in production.
        with _stdout_lines() as stream, contextlib.suppress(RetryableError):
            scenario()
        entries.extend(to_log_entry(line, function) for line in stream.getvalue().splitlines())

    # select: a tick with one due subscription, acknowledged.
    select_deps = SelectDependencies(
        settings=settings, store=_store(), publisher=FakePublisher(), clock=lambda: NOW
    )
    run(
        "select",
        lambda: process_message(
            _push({"time": "2026-01-05T09:00:00Z"}, "tick-1"),
            route=_route("dispatcher-ticks"),
            use_case=lambda p, m: select_due(p, m, deps=select_deps),
            dead_letters=dead_letters,
        ),
    )

    # fanout: one due message dispatched, one whose task Cloud Tasks refuses (retry), one for a
    # subscription that does not exist (dead-lettered).
    store, ledger, tasks = _store(), FakeLedger(), FakeTasks()
    fanout_deps = FanoutDependencies(
        settings=settings, store=store, tasks=tasks, ledger=ledger, clock=lambda: NOW
    )
    due = {"subscription_id": "acme", "slot": "2026-01-05T09:00:00Z", "reason": "schedule"}
    for message_id, payload in (
        ("due-1", due),
        ("due-2", {**due, "slot": "2026-01-05T09:05:00Z"}),
        ("due-3", {"subscription_id": "nobody", "reason": "manual"}),
    ):
        if message_id == "due-2":
            tasks.fail_names.add(_any_new_task_name(fanout_deps, payload))
        run(
            "fanout",
            lambda payload=payload, message_id=message_id: process_message(
                _push(payload, message_id),
                route=_route("dispatcher-due"),
                use_case=lambda p, m: fanout(p, m, deps=fanout_deps),
                dead_letters=dead_letters,
            ),
        )

    # maintenance reconcile: the failed dispatch is re-created, and Cloud Tasks refuses again.
    run(
        "maintenance",
        lambda: reconcile(
            ledger,
            store,
            tasks,
            settings=settings,
            now=NOW + timedelta(hours=2),
            older_than=timedelta(minutes=60),
        ),
    )

    # results: a collector's last attempt failed (a final failure), then reconcile finds a task
    # created long ago that never reported (lost) and completes its run.
    results_ledger = _OutcomeLedger()
    results_deps = ResultsDependencies(
        settings=settings, ledger=results_ledger, completions=_Completions(), clock=lambda: NOW
    )
    failed = {
        "dispatch_key": {
            "subscription_id": "acme",
            "slot": "2026-01-05T09:00:00Z",
            "source_id": "a",
        },
        "outcome": "failed",
        "attempt": 5,
        "error": "HTTP 503",
    }
    run(
        "results",
        lambda: process_message(
            _push(failed, "result-1"),
            route=_route("dispatcher-results"),
            use_case=lambda p, m: record_result(p, m, deps=results_deps),
            dead_letters=dead_letters,
        ),
    )
    run(
        "maintenance",
        lambda: settle_outcomes(
            results_ledger,
            _Completions(),
            lost_after=timedelta(hours=2),
            lease=timedelta(seconds=60),
        ),
    )
    # select's digests: one whose email task Cloud Tasks refuses for good (digest-failed, the
    # tick acknowledged) and one whose slot is older than max_age (digest-stale, not sent).
    run("select", lambda: _digest_tick(settings))
    return entries


def _digest_tick(settings: Any) -> None:
    # acme's digest is 08:00 New York (12:00 UTC), beta's 10:00 UTC; at a 17:00 UTC tick acme's
    # slot is 5 h old (planned, and refused) and beta's 7 h (past max_age: stale, not sent).
    tick = utc("2026-03-10T17:00")
    beta = copy.deepcopy(subscription().data)
    beta["deliveries"][1]["schedule"] = {"cron": "0 10 * * *", "timezone": "Etc/UTC"}
    plan = PlanDependencies(
        store=None,
        tasks=DigestTasks(TaskRejectedError("t", "NOT_FOUND", "queue email-deliveries missing")),
        subscriptions=FakeSubscriptions(subscription(), StoredSubscription("beta", beta)),
        settings=load_email_settings(environ={}),
        project="p",
        location="l",
        clock=lambda: tick,
    )
    schedules = FakeSchedules(
        DigestSchedule("acme", "digest", next_run_at=utc("2026-03-10T12:00")),
        DigestSchedule("beta", "digest", next_run_at=utc("2026-03-10T10:00")),
    )
    deps = SelectDependencies(
        settings=settings,
        store=FakeSubscriptionStore(),
        publisher=FakePublisher(),
        clock=lambda: tick,
        digests=DigestDependencies(schedules=schedules, plan=lambda: plan),
    )
    select_due({"time": "2026-03-10T17:00:00Z"}, message("tick-d"), deps=deps)


class _Completions:
    def publish(self, messages: Sequence[OutboundMessage]) -> list[str]:
        return [f"event-{i}" for i, _ in enumerate(messages)]


class _OutcomeLedger:
    """What the results path and settling read and write, for one failed and one lost task."""

    def record_outcome(self, *args: Any, **kwargs: Any) -> OutcomeRecorded:
        return OutcomeRecorded(1, 7, "rss", "failed", True, 5, None, False)

    def mark_lost(
        self, older_than: timedelta, limit: int, *, dry_run: bool = False
    ) -> list[LostDispatch]:
        return [LostDispatch(2, 8, "acme", NOW - timedelta(hours=3), "b", "rss", "t-b", NOW)]

    def complete_runs(self, run_ids: Sequence[int], *, lease: timedelta) -> list[RunCompletion]:
        return []

    def unpublished_completions(self, older_than: timedelta, limit: int) -> list[int]:
        return []

    def mark_completion_published(self, run_id: int, message_id: str) -> bool:
        return True

    def release_completion_claim(self, run_id: int) -> None:
        return None


def _any_new_task_name(deps: FanoutDependencies, payload: Mapping[str, Any]) -> str:
    """The task name fanout will give the first source of ``payload`` (so a fake can refuse it)."""
    source = SOURCES[0]
    queue = deps.settings.queue_path(str(source["kind"]))
    slot = utc(str(payload["slot"]).removesuffix("Z"))
    return task_name(queue, DispatchKey(str(payload["subscription_id"]), slot, str(source["id"])))
