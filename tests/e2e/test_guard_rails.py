"""Guard rails for bad input, end to end: a clear dead letter, nothing lost, nothing moved.

Messages are typed as an operator would (the ``dispatcher`` CLI as a subprocess with the stack's
environment, or plain gcloud) and go through the real push subscriptions to the functions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import requests

from emulators.stack import apply_local_queues
from shared.config import load_settings
from shared.scheduling import floor_minute
from shared.topology import load_topology
from tests.support.core import subscription_doc
from tests.support.polling import wait_for
from tests.support.stack import PulledMessage, StackHandle, dispatcher

pytestmark = pytest.mark.e2e

# Every dead-letter subscription: `dispatcher status` counts them all, and earlier modules may
# leave letters behind (the collector auth test's result for a subscription that never existed).
DLQ_SUBS = [t.dead_letter.subscription for t in load_topology().topics]
RSS = {"id": "feed-a", "kind": "rss", "params": {"url": "https://example.com/a.xml"}}
DIGEST = {"id": "digest", "kind": "email-digest", "params": {}}


@pytest.fixture(autouse=True)
def clean(stack: StackHandle) -> None:
    stack.wipe_firestore()
    stack.wipe_ledger()
    stack.clear_collector()
    stack.drain(DLQ_SUBS)


def seed(firestore_client: Any, subscription_id: str, next_run: datetime, **fields: Any) -> None:
    shards = load_settings(environ={}).shard_count
    doc = subscription_doc(
        subscription_id, schedule={"every": 300}, start=next_run, shard_count=shards, **fields
    )
    doc["next_run_at"] = next_run
    firestore_client.collection("subscriptions").document(subscription_id).set(doc)


def next_runs(firestore_client: Any) -> dict[str, datetime]:
    return {
        snap.id: snap.get("next_run_at")
        for snap in firestore_client.collection("subscriptions").stream()
    }


def letter_of(stack: StackHandle, subscription: str, message_id: str) -> PulledMessage | None:
    # Acked when pulled: each test drained the dead-letter subscriptions first and reads its own.
    found = [
        m
        for m in stack.pull(subscription)
        if m.attributes.get("dlq_source_message_id") == message_id
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def decisions(stack: StackHandle, component: str, message_id: str) -> list[str]:
    return [
        str(line["outcome"])
        for line in stack.log_lines(component)
        if line.get("event_id") == message_id and "outcome" in line
    ]


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ledger_rows(stack: StackHandle, subscription_id: str) -> dict[str, tuple[str, str | None]]:
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT source_id, state, last_error FROM dispatches WHERE subscription_id = %s",
            (subscription_id,),
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_a_tick_a_year_ahead_is_dead_lettered_and_moves_no_next_run(
    stack: StackHandle, firestore_client: Any
) -> None:
    now = datetime.now(UTC)
    for n, subscription_id in enumerate(("acme", "beta", "gamma")):
        # Due now (in different shards): a tick at any later time would select them.
        seed(firestore_client, subscription_id, floor_minute(now) - timedelta(minutes=5 * n))
    before = next_runs(firestore_client)
    year_ahead = rfc3339(now + timedelta(days=365))

    refused = dispatcher(stack, "tick", "--time", year_ahead, expect=1)
    assert "max_tick_skew_seconds" in refused.stderr and "--allow-future" in refused.stderr

    published = dispatcher(stack, "tick", "--time", year_ahead, "--allow-future", "--json")
    message_id = json.loads(published.stdout)["message_id"]
    letter = wait_for(
        lambda: letter_of(stack, "dispatcher-ticks-dlq-sub", message_id),
        timeout=30,
        message="the tick's dead letter",
    )
    assert letter.attributes["dlq_reason_class"] == "TickTooFarAheadError"
    assert letter.attributes["dlq_path"] == "$.time"
    assert letter.attributes["dlq_rule"] == "max_tick_skew_seconds"
    assert letter.attributes["dlq_value"] == year_ahead
    assert "skip every slot" in letter.attributes["dlq_reason"]
    assert json.loads(letter.data) == {"time": year_ahead}, "the original tick is kept"
    assert decisions(stack, "fn-select", message_id) == ["dead-lettered"]
    assert next_runs(firestore_client) == before
    assert ledger_rows(stack, "acme") == {}


def test_recompute_next_run_brings_back_schedules_a_wrong_tick_moved(
    stack: StackHandle, firestore_client: Any
) -> None:
    # What a year-ahead tick did before the guard (or does with a skew set that wide): every
    # due subscription's next run a year ahead.
    now = datetime.now(UTC)
    for subscription_id in ("acme", "beta"):
        seed(firestore_client, subscription_id, floor_minute(now) + timedelta(days=365))
    started = datetime.now(UTC)
    stack.gcloud_publish("dispatcher-maintenance", '{"job": "recompute-next-run"}')

    def recovered() -> dict[str, datetime] | None:
        runs = next_runs(firestore_client)
        return runs if all(r < started + timedelta(days=1) for r in runs.values()) else None

    runs = wait_for(recovered, timeout=30, message="next_run_at recomputed from now")
    for next_run in runs.values():
        # The first slot of the every-5-minutes schedule at or after the job ran.
        assert (
            started - timedelta(seconds=1) <= next_run <= datetime.now(UTC) + timedelta(minutes=5)
        )


def test_a_slot_40_days_ahead_is_dead_lettered_once_with_its_reason(
    stack: StackHandle, firestore_client: Any
) -> None:
    seed(firestore_client, "acme", floor_minute(datetime.now(UTC)) + timedelta(hours=1))
    slot = rfc3339(floor_minute(datetime.now(UTC)) + timedelta(days=40))
    message = json.dumps({"subscription_id": "acme", "slot": slot, "reason": "manual"})
    message_id = stack.gcloud_publish("dispatcher-due", message)
    letter = wait_for(
        lambda: letter_of(stack, "dispatcher-due-dlq-sub", message_id),
        timeout=30,
        message="the due message's dead letter",
    )
    assert letter.attributes["dlq_reason_class"] == "SlotTooFarAheadError"
    assert letter.attributes["dlq_path"] == "$.slot"
    assert letter.attributes["dlq_value"] == slot
    assert "Cloud Tasks accepts at most 30 days" in letter.attributes["dlq_reason"]
    assert decisions(stack, "fn-fanout", message_id) == ["dead-lettered"]
    assert ledger_rows(stack, "acme") == {}, "refused before any ledger write"


def test_a_deleted_queue_is_dead_lettered_once_status_names_it_and_a_replay_finishes(
    stack: StackHandle, firestore_client: Any
) -> None:
    from shared.clients import build_tasks_client

    settings = load_settings(environ=stack.env)
    tasks = build_tasks_client(stack.env["CLOUD_TASKS_EMULATOR_HOST"])
    digest_queue = settings.queue_path("email-digest")
    seed(
        firestore_client,
        "mixed",
        floor_minute(datetime.now(UTC)) + timedelta(hours=1),
        sources=[RSS, DIGEST],
        jitter_seconds=0,
    )
    tasks.delete_queue(name=digest_queue)
    try:
        slot = rfc3339(floor_minute(datetime.now(UTC)))
        message = json.dumps({"subscription_id": "mixed", "slot": slot, "reason": "manual"})
        message_id = stack.gcloud_publish("dispatcher-due", message)

        def listed() -> dict[str, Any] | None:
            # Read the way an operator does: listed, not consumed.
            out = dispatcher(stack, "dlq", "list", "--topic", "dispatcher-due", "--json").stdout
            found = [
                d
                for d in json.loads(out)
                if d["attributes"].get("dlq_source_message_id") == message_id
            ]
            return found[0] if found else None

        letter = wait_for(listed, timeout=30, message="the due message's dead letter")
        attributes = letter["attributes"]
        assert attributes["dlq_reason_class"] == "TasksRejectedError"
        assert attributes["dlq_rule"] == "NOT_FOUND"
        assert attributes["dlq_value"] == digest_queue
        assert "1 of 2" in attributes["dlq_reason"]
        assert decisions(stack, "fn-fanout", message_id) == ["dead-lettered"], "once, no retry"
        rows = ledger_rows(stack, "mixed")
        assert rows["feed-a"] == ("created", None)
        assert rows["digest"][0] == "failed" and "NOT_FOUND" in str(rows["digest"][1])

        status = json.loads(dispatcher(stack, "status", "--json", expect=1).stdout)
        problems = "\n".join(status["problems"])
        assert "dead-letters: dispatcher-due-dlq-sub: 1 dead letter(s) (TasksRejectedError x1)" in (
            problems
        )
        assert "dispatches: 1 dispatch(es) failed" in problems
        assert "mixed @ " + slot + " source digest (failed)" in problems
        assert "queues: collect-email-digest (email-digest) does not exist" in problems
        human = dispatcher(stack, "status", expect=1).stdout
        assert "needs attention" in human and "dispatcher-due-dlq-sub" in human

        # The created task reaches the collector before the queues are put back.
        wait_for(
            lambda: [r for r in stack.collector_requests() if "feed-a" in json.dumps(r)],
            timeout=30,
            message="feed-a's task at the collector",
        )
    finally:
        # The emulator keeps a deleted queue's name for 7 days, as Cloud Tasks does: reset it
        # and create the configured queues again, for this test's replay and for the others.
        requests.post(f"{stack.env['CLOUD_TASKS_EMULATOR_HTTP']}/reset", timeout=10)
        apply_local_queues(stack.env, tasks)

    replay = json.loads(
        dispatcher(stack, "dlq", "replay", "--topic", "dispatcher-due", "--json").stdout
    )
    assert replay["counts"]["replayed"] == 1
    wait_for(
        lambda: ledger_rows(stack, "mixed")["digest"][0] == "created",
        timeout=30,
        message="the refused dispatch created after the replay",
    )
    arrived = wait_for(
        lambda: [r for r in stack.collector_requests() if "mixed" in json.dumps(r)][1:] or None,
        timeout=30,
        message="the second task at the collector",
    )
    assert len(arrived) == 1, "one task per source: feed-a was not created again"
    [replayed] = [
        line
        for line in stack.log_lines("fn-fanout")
        if line.get("subscription_id") == "mixed" and line.get("decision") == "dispatched"
    ]
    assert (replayed["created_sources"], replayed["done_sources"]) == (["digest"], ["feed-a"])
    assert "digest" in json.dumps(arrived)
    dispatcher(stack, "status", expect=0)
