"""Dependencies that are down: fail fast and retryably, and leave the ledger telling the story."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from emulators.process import free_port
from shared.clients import build_tasks_client
from shared.dal.cloud_tasks import CloudTasksGateway
from shared.dal.firestore_store import FirestoreSubscriptionStore
from shared.envelope import PushMessage
from shared.errors import RetryableError
from shared.usecases.fanout import FanoutDependencies, fanout
from tests.integration.core.harness import Core
from tests.support.core import emulator_environment, subscription_doc, utc

SLOT = utc("2026-01-05T09:00")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung dependency)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


@pytest.mark.parametrize("target", ["refused", "hung"])
def test_a_dead_firestore_fails_the_due_query_fast_and_retryably(
    core: Core, silent_port: int, target: str
) -> None:
    from google.cloud import firestore

    port = free_port("127.0.0.1") if target == "refused" else silent_port
    env = {**core.stack.env, "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{port}"}
    with emulator_environment(env):
        client = firestore.Client(project=core.settings.project)
    store = FirestoreSubscriptionStore(lambda: client, timeout=1.0, retry_budget=2.0)
    began = time.monotonic()
    with pytest.raises(RetryableError) as caught:
        store.due_page(0, SLOT, 10)
    elapsed = time.monotonic() - began
    assert elapsed < 10, f"took {elapsed:.1f}s: a dead Firestore must not outlive the ack deadline"
    assert "firestore" in caught.value.message
    with pytest.raises(RetryableError):
        store.get("anything")


def test_failed_task_creates_are_recorded_then_the_redelivery_completes_them(
    core: Core,
) -> None:
    sources = [
        {"id": "a", "kind": "rss", "params": {}},
        {"id": "b", "kind": "social", "params": {}},
    ]
    doc = subscription_doc(
        "fail-1", schedule={"every": 300}, start=SLOT, shard_count=16, sources=sources
    )
    core.seed({"fail-1": doc})
    payload = {"subscription_id": "fail-1", "slot": "2026-01-05T09:00:00Z", "reason": "schedule"}
    message = PushMessage(data=json.dumps(payload).encode(), attributes={}, message_id="d-1")
    dead_tasks = build_tasks_client(f"127.0.0.1:{free_port('127.0.0.1')}")
    broken = FanoutDependencies(
        settings=core.settings,
        store=core.store,
        tasks=CloudTasksGateway(lambda: dead_tasks, timeout=1.0, retry_budget=1.0),
        ledger=core.fanout_deps.ledger,
    )
    with pytest.raises(RetryableError, match="2 of 2"):
        fanout(payload, message, deps=broken)
    rows = core.ledger.dispatches_for("fail-1")
    assert {(r.source_id, r.state, r.attempts) for r in rows} == {
        ("a", "failed", 1),
        ("b", "failed", 1),
    }
    assert all(r.last_error for r in rows)
    # Pub/Sub redelivers; Cloud Tasks is back.
    fanout(payload, message, deps=core.fanout_deps)
    rows = core.ledger.dispatches_for("fail-1")
    assert {(r.source_id, r.state, r.attempts) for r in rows} == {
        ("a", "created", 1),
        ("b", "created", 1),
    }
    assert sorted(k[2] for k in core.collected("fail-", 2)) == ["a", "b"]
