"""A sharded source kind on the real stack: each task lands on the shard queue its dispatch key
hashes to, redeliveries create nothing more, and every key reaches the collector exactly once."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import requests

from shared.dispatch_key import DispatchKey
from shared.envelope import PushMessage
from shared.tasks_admin import apply_queues
from shared.usecases.fanout import FanoutDependencies, fanout
from tests.integration.core.harness import Core
from tests.support.core import subscription_doc, utc


def test_a_sharded_kind_spreads_its_tasks_by_key_and_dispatches_each_once(core: Core) -> None:
    rss = replace(core.settings.queues["rss"], shards=2)
    settings = replace(core.settings, queues={**core.settings.queues, "rss": rss})
    apply_queues(settings, core.tasks_client)  # shard 1 is new; shard 0 is updated in place
    names = {q["name"] for q in _queues(core)}
    assert set(settings.queue_paths("rss")) <= names
    deps = FanoutDependencies(
        settings=settings,
        store=core.store,
        tasks=core.fanout_deps.tasks,
        ledger=core.fanout_deps.ledger,
    )
    slot = utc("2026-01-05T09:00")
    docs = {
        f"shard-{i:02d}": subscription_doc(
            f"shard-{i:02d}",
            schedule={"every": 300},
            start=slot,
            shard_count=settings.shard_count,
            sources=[{"id": "feed", "kind": "rss", "params": {"n": i}}],
            jitter_seconds=0,
        )
        for i in range(24)
    }
    core.seed(docs)
    for attempt in range(2):  # the second delivery of every due message creates nothing
        for sid in docs:
            payload = {"subscription_id": sid, "slot": "2026-01-05T09:00:00Z", "reason": "schedule"}
            message = PushMessage(
                data=json.dumps(payload).encode(), attributes={}, message_id=f"{sid}-{attempt}"
            )
            fanout(payload, message, deps=deps)

    with core.pool.connection() as conn:
        rows = conn.execute(
            "SELECT subscription_id, queue, task_name FROM dispatches "
            "WHERE subscription_id LIKE %s",
            ("shard-%",),
        ).fetchall()
    assert len(rows) == len(docs)
    for sid, queue, task_name in rows:
        expected = settings.queue_path_for("rss", DispatchKey(sid, slot, "feed"))
        assert queue == expected and task_name.startswith(f"{expected}/tasks/")
    assert Counter(q for _, q, _ in rows).keys() == set(settings.queue_paths("rss"))

    collected = core.collected("shard-", len(docs))
    assert Counter(collected) == Counter((sid, "2026-01-05T09:00:00Z", "feed") for sid in docs), (
        "every key exactly once"
    )


def _queues(core: Core) -> list[dict[str, object]]:
    base = core.stack.env["CLOUD_TASKS_EMULATOR_HTTP"]
    queues = requests.get(f"{base}/queues", timeout=10).json()["queues"]
    assert isinstance(queues, list)
    return queues
