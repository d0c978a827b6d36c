"""Closing the loop on the real stack: tasks → the collector stub (worker kit) → results → ledger.

tick → select → fanout → Cloud Tasks emulator → collector stub, which executes each task through
the worker kit and publishes its outcome on ``dispatcher-results`` → the results function
records it and completes the run → one ``run-completed`` event per run on
``dispatcher-run-completed``, pushed to ``plan-deliveries`` (whose log lines say which
messages it received). Nothing is called in-process.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from shared.clients import build_tasks_client
from shared.config import load_settings
from tests.support.core import subscription_doc, utc
from tests.support.polling import wait_for
from tests.support.stack import PulledMessage, StackHandle

pytestmark = pytest.mark.e2e

T = TypeVar("T")
SLOT = utc("2026-01-05T09:00")
TICK = json.dumps({"time": "2026-01-05T09:00:05Z"})
RESULTS_DLQ = "dispatcher-results-dlq-sub"
SOURCES = [
    {"id": "wire", "kind": "rss", "params": {"url": "https://example.com/feed.xml"}},
    {"id": "blog", "kind": "rss", "params": {"url": "https://example.com/blog.xml"}},
]


@pytest.fixture(autouse=True)
def clean(stack: StackHandle) -> Iterator[None]:
    stack.wipe_firestore()
    stack.wipe_ledger()
    stack.clear_collector()
    stack.reset_collector_control()
    stack.drain([RESULTS_DLQ, "dispatcher-due-dlq-sub", "dispatcher-ticks-dlq-sub"])
    yield
    stack.reset_collector_control()


def wait(
    stack: StackHandle, condition: Callable[[], T | None], what: str, timeout: float = 90
) -> T:
    try:
        return wait_for(condition, timeout=timeout, message=what)
    except AssertionError as exc:
        tails = "".join(
            f"\n--- {c} ---\n{stack.log(c)[-2500:]}"
            for c in ("fn-fanout", "fn-results", "collector", "fn-maintenance")
        )
        raise AssertionError(f"{exc}{tails}") from None


def seed(
    client: Any, prefix: str, count: int, sources: list[dict[str, Any]], **fields: Any
) -> None:
    batch = client.batch()
    for i in range(count):
        doc_id = f"{prefix}-{i}"
        doc = subscription_doc(
            doc_id,
            schedule={"every": 300},
            start=SLOT,
            shard_count=16,
            sources=sources,
            jitter_seconds=0,
            **fields,
        )
        batch.set(client.collection("subscriptions").document(doc_id), doc)
    batch.commit()


def dispatches(stack: StackHandle, prefix: str) -> list[dict[str, Any]]:
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT subscription_id, source_id, state, execution_state, execution_final, "
            "execution_attempts, items, execution_error FROM dispatches "
            "WHERE subscription_id LIKE %s ORDER BY subscription_id, source_id",
            (prefix + "%",),
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def runs(stack: StackHandle, prefix: str) -> list[dict[str, Any]]:
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT id, subscription_id, completed_at, succeeded, completion_published_at, "
            "completion_message_id FROM runs WHERE subscription_id LIKE %s ORDER BY id",
            (prefix + "%",),
        )
        names = [c.name for c in cur.description or []]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def events(stack: StackHandle, prefix: str) -> dict[str, set[str]]:
    """The run-completed messages plan-deliveries received, as message ids per subscription.

    The push handler writes one line per delivery with the Pub/Sub message id (``event_id``):
    a redelivery repeats an id, a second publication would add one.
    """
    received: dict[str, set[str]] = {}
    for line in stack.log_lines("fn-plan-deliveries"):
        subscription_id = str(line.get("subscription_id", ""))
        if line.get("logger") == "shared.handler" and subscription_id.startswith(prefix):
            received.setdefault(subscription_id, set()).add(str(line["event_id"]))
    return received


def all_published(stack: StackHandle, prefix: str, expected: int) -> list[dict[str, Any]] | None:
    found = runs(stack, prefix)
    done = [r for r in found if r["completion_published_at"] is not None]
    return found if len(found) == expected and len(done) == expected else None


def test_every_key_succeeds_and_every_run_completes_once_with_results_tripled_and_shuffled(
    stack: StackHandle, firestore_client: Any
) -> None:
    # Every outcome message three times, `started` too, in a random order (succeeded possibly
    # before its started): the ledger must end exactly as with one clean copy of each.
    stack.collector_control(report_started=True, result_copies=3, shuffle_results=True)
    seed(firestore_client, "loop", 4, SOURCES)
    stack.gcloud_publish("dispatcher-ticks", TICK)

    completed = wait(stack, lambda: all_published(stack, "loop-", 4), "4 runs completed")
    rows = dispatches(stack, "loop-")
    assert [(r["state"], r["execution_state"], r["execution_final"]) for r in rows] == [
        ("created", "succeeded", True)
    ] * 8
    assert all(r["execution_attempts"] == 1 for r in rows)
    assert all(r["succeeded"] is True and r["completed_at"] is not None for r in completed)

    # Exactly one run-completed event per run, even after every duplicate was delivered.
    wait(stack, lambda: len(events(stack, "loop-")) >= 4 or None, "4 run-completed events")
    duplicates_delivered = wait(
        stack,
        lambda: (
            c if len(c := recorded_results(stack, "loop-")) == 8 and min(c.values()) >= 6 else None
        ),
        "every copy of every result recorded",
    )
    # 2 outcomes (started, succeeded) x 3 copies per key reached the results function (a copy
    # that met another instance publishing the run's event is sent back once, hence ">=").
    assert len(duplicates_delivered) == 8
    assert min(duplicates_delivered.values()) >= 6
    received = events(stack, "loop-")
    assert received == {r["subscription_id"]: {r["completion_message_id"]} for r in completed}
    assert [m for m in stack.pull(RESULTS_DLQ) if b'"loop-' in m.data] == []
    errors = [
        line
        for line in stack.log_lines("fn-results")
        if str(line.get("subscription_id", "")).startswith("loop-") and line["severity"] == "ERROR"
    ]
    assert errors == []


def recorded_results(stack: StackHandle, prefix: str) -> Counter[tuple[str, str]]:
    """How many result messages the results function recorded, per dispatch key."""
    return Counter(
        (line["subscription_id"], line["source_id"])
        for line in stack.log_lines("fn-results")
        if str(line.get("subscription_id", "")).startswith(prefix)
        and "outcome" in line
        and "execution_state" in line
    )


def test_a_collector_failing_twice_then_succeeding_ends_with_three_attempts(
    stack: StackHandle, firestore_client: Any
) -> None:
    stack.collector_control(fail_status=503, fail_count=2)
    seed(firestore_client, "flaky", 1, SOURCES[:1])
    stack.gcloud_publish("dispatcher-ticks", TICK)

    wait(stack, lambda: all_published(stack, "flaky-", 1), "the run completed", timeout=120)
    [row] = dispatches(stack, "flaky-")
    assert (row["execution_state"], row["execution_final"], row["execution_attempts"]) == (
        "succeeded",
        True,
        3,
    )
    assert "503" in str(row["execution_error"])  # the last failure stays visible
    statuses = [r["status"] for r in stack.collector_requests() if _sub(r) == "flaky-0"]
    assert statuses == [503, 503, 200]


def _sub(record: dict[str, Any]) -> str | None:
    body = record.get("body")
    if isinstance(body, dict) and isinstance(body.get("dispatch_key"), dict):
        return str(body["dispatch_key"]["subscription_id"])
    return None


def test_a_subscription_paused_after_dispatch_is_skipped_at_execution(
    stack: StackHandle, firestore_client: Any
) -> None:
    settings = load_settings(environ=stack.env)
    tasks = build_tasks_client(stack.env["CLOUD_TASKS_EMULATOR_HOST"])
    queue = settings.queue_path("rss")
    seed(firestore_client, "pause", 1, SOURCES[:1])
    tasks.pause_queue(request={"name": queue})
    try:
        stack.gcloud_publish("dispatcher-ticks", TICK)
        wait(
            stack,
            lambda: [r for r in dispatches(stack, "pause-") if r["state"] == "created"] or None,
            "the task created (queue paused)",
        )
        # The operator pauses the subscription after fanout created its task.
        firestore_client.collection("subscriptions").document("pause-0").update({"paused": True})
    finally:
        tasks.resume_queue(request={"name": queue})

    wait(stack, lambda: all_published(stack, "pause-", 1), "the run completed")
    [row] = dispatches(stack, "pause-")
    assert (row["execution_state"], row["execution_final"]) == ("skipped", True)
    [record] = [r for r in stack.collector_requests() if _sub(r) == "pause-0"]
    assert record["status"] == 200
    assert record["decision"] == "skipped" and record["outcome"] == "skipped"
    # A skipped dispatch is not a failure: the run still counts as succeeded.
    [run] = runs(stack, "pause-")
    assert run["succeeded"] is True


def test_a_result_typed_by_hand_is_recorded_and_a_malformed_one_is_dead_lettered(
    stack: StackHandle, firestore_client: Any
) -> None:
    stack.collector_control(report_outcomes=False)  # the stub collects and reports nothing
    seed(firestore_client, "hand", 1, SOURCES[:1])
    stack.gcloud_publish("dispatcher-ticks", TICK)
    wait(
        stack,
        lambda: [r for r in stack.collector_requests() if _sub(r) == "hand-0"] or None,
        "the task executed",
    )
    key = {"subscription_id": "hand-0", "slot": "2026-01-05T09:00:00Z", "source_id": "wire"}
    stack.gcloud_publish(
        "dispatcher-results", json.dumps({"dispatch_key": key, "outcome": "succeeded", "items": 5})
    )
    wait(stack, lambda: all_published(stack, "hand-", 1), "the run completed by hand")
    [row] = dispatches(stack, "hand-")
    assert (row["execution_state"], row["items"]) == ("succeeded", 5)

    poison = json.dumps({"dispatch_key": key, "outcome": "done"})
    stack.gcloud_publish("dispatcher-results", poison)
    letters: list[PulledMessage] = []

    def ours() -> list[PulledMessage]:
        letters.extend(stack.pull(RESULTS_DLQ))
        return [m for m in letters if m.data == poison.encode()]

    [letter, *_] = wait(stack, ours, "the malformed result in the DLQ")
    assert letter.attributes["dlq_path"] == "$.outcome"
    assert letter.attributes["dlq_rule"] == "enum"
    # The row did not move: the valid report stands.
    assert dispatches(stack, "hand-")[0]["execution_state"] == "succeeded"

    ghost = json.dumps({"dispatch_key": {**key, "source_id": "nope"}, "outcome": "succeeded"})
    stack.gcloud_publish("dispatcher-results", ghost)

    def ghosts() -> list[PulledMessage]:
        letters.extend(stack.pull(RESULTS_DLQ))
        return [m for m in letters if m.data == ghost.encode()]

    [unknown, *_] = wait(stack, ghosts, "the unknown key in the DLQ")
    assert unknown.attributes["dlq_reason_class"] == "UnknownDispatchError"


def test_reconcile_reports_a_created_dispatch_without_outcome_as_lost(
    stack: StackHandle, firestore_client: Any
) -> None:
    stack.collector_control(report_outcomes=False)
    seed(firestore_client, "lost", 1, SOURCES[:1])
    stack.gcloud_publish("dispatcher-ticks", TICK)
    wait(
        stack,
        lambda: [r for r in stack.collector_requests() if _sub(r) == "lost-0"] or None,
        "the task executed",
    )
    # Younger than the configured lost_after (2 h): nothing happens.
    stack.gcloud_publish("dispatcher-maintenance", json.dumps({"job": "reconcile"}))
    wait(stack, lambda: reconcile_lines(stack) or None, "the first reconcile")
    assert dispatches(stack, "lost-")[0]["execution_state"] is None

    stack.gcloud_publish(
        "dispatcher-maintenance", json.dumps({"job": "reconcile", "lost_after_seconds": 1})
    )
    wait(stack, lambda: all_published(stack, "lost-", 1), "the run completed as lost")
    [row] = dispatches(stack, "lost-")
    assert (row["execution_state"], row["execution_final"]) == ("lost", True)
    [run] = runs(stack, "lost-")
    assert run["succeeded"] is False
    received = wait(stack, lambda: events(stack, "lost-") or None, "its run-completed")
    assert received == {"lost-0": {run["completion_message_id"]}}
    lost_lines = [
        line
        for line in stack.log_lines("fn-maintenance")
        if line.get("decision") == "lost" and line.get("subscription_id") == "lost-0"
    ]
    assert len(lost_lines) == 1 and lost_lines[0]["severity"] == "WARNING"


def reconcile_lines(stack: StackHandle) -> list[dict[str, Any]]:
    return [
        line
        for line in stack.log_lines("fn-maintenance")
        if line.get("job") == "reconcile" and "lost" in line.get("counts", {})
    ]
