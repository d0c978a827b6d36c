"""Maintenance reconcile on the real stack: a dispatch left ``claimed`` by a crash gets its task."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import requests

from shared.dispatch_key import DispatchKey, task_name
from shared.ops.context import OpsContext
from shared.ops.subscriptions import write_subscription
from shared.scheduling import floor_minute
from shared.usecases.maintenance import JobContext, run_job
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

pytestmark = pytest.mark.integration

SUB = "reconcile-me"


@pytest.fixture
def ctx(ops_env: dict[str, str]) -> Iterator[OpsContext]:
    context = OpsContext()
    try:
        yield context
    finally:
        context.close()


def _collected(stack: StackHandle, slot: datetime) -> list[dict[str, Any]]:
    key = DispatchKey(SUB, slot, "feed").to_json()
    return [
        r["body"]
        for r in stack.collector_requests()
        if isinstance(r.get("body"), dict) and r["body"]["dispatch_key"] == key
    ]


def _queues_idle(stack: StackHandle) -> bool:
    base = stack.env["CLOUD_TASKS_EMULATOR_HTTP"]
    stats = requests.get(f"{base}/queues", timeout=10).json()["queues"]
    return all(q["tasks"] == 0 and q["in_flight"] == 0 for q in stats)


def _state(stack: StackHandle, dispatch_id: int) -> str:
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT state FROM dispatches WHERE id = %s", (dispatch_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_reconcile_recreates_a_claimed_dispatch_once(ctx: OpsContext, stack: StackHandle) -> None:
    write_subscription(
        ctx.store(),
        SUB,
        {
            "name": "Reconcile me",
            "schedule": {"every": 900},
            "sources": [{"id": "feed", "kind": "rss", "params": {"url": "https://e.com/f"}}],
            "jitter_seconds": 0,
        },
        now=lambda: datetime.now(UTC),
        shard_count=ctx.settings.shard_count,
        known_kinds=ctx.settings.queues.keys(),
    )
    # What fanout leaves when it dies between claiming the key and creating the task.
    slot = floor_minute(datetime.now(UTC)) - timedelta(minutes=10)
    queue = ctx.settings.queue_path("rss")
    name = task_name(queue, DispatchKey(SUB, slot, "feed"))
    ledger = ctx.ledger()
    run = ledger.record_run(SUB, slot, "schedule")
    claim = ledger.claim_dispatch(run, "feed", "rss", name, queue)
    # ... and that was a while ago (the job takes at least one minute of age).
    with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "UPDATE dispatches SET updated_at = now() - interval '5 minutes' WHERE id = %s",
            (claim.dispatch_id,),
        )

    stack.gcloud_publish("dispatcher-maintenance", '{"job": "reconcile", "older_than_minutes": 1}')
    wait_for(
        lambda: _state(stack, claim.dispatch_id) == "created",
        timeout=30,
        message="the maintenance function to re-create the task",
    )
    wait_for(
        lambda: _collected(stack, slot) and _queues_idle(stack),
        timeout=30,
        message="the re-created task to reach the collector",
    )
    bodies = _collected(stack, slot)
    assert len(bodies) == 1
    assert bodies[0]["task_name"] == name.rsplit("/", 1)[-1]
    assert (bodies[0]["reason"], bodies[0]["run_id"]) == ("schedule", run.id)
    lines = [line for line in stack.log_lines("fn-maintenance") if line.get("job") == "reconcile"]
    assert lines and lines[-1]["counts"]["recreated"] == 1, lines[-1:]

    # A second run (in process, same stack) finds nothing left to do and creates nothing.
    context = JobContext(ctx.settings, datetime.now(UTC), ctx.store, ctx.ledger)
    again = run_job("reconcile", {"job": "reconcile", "older_than_minutes": 1}, context)
    assert again["stuck"] == 0 and again["recreated"] == 0
    assert _queues_idle(stack)
    assert len(_collected(stack, slot)) == 1
    assert json.dumps(bodies[0]) == json.dumps(_collected(stack, slot)[0])
