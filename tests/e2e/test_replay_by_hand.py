"""Operators replay by hand with gcloud: a repeated tick or due message dispatches nothing twice."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.core import subscription_doc, utc
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

pytestmark = pytest.mark.e2e

SOURCES = [
    {"id": "wire", "kind": "rss", "params": {"url": "https://example.com/wire.xml"}},
    {"id": "search", "kind": "news-api", "params": {"q": "initech"}},
]


@pytest.fixture(autouse=True)
def clean(stack: StackHandle) -> None:
    stack.wipe_firestore()
    stack.wipe_ledger()
    stack.clear_collector()


def _seed(firestore_client: Any, slot: str) -> None:
    doc = subscription_doc(
        "replay-me",
        schedule={"every": 3600},
        start=utc(slot),
        shard_count=16,
        sources=SOURCES,
        jitter_seconds=0,
    )
    firestore_client.collection("subscriptions").document("replay-me").set(doc)


def _tasks(stack: StackHandle) -> list[tuple[str, str, str]]:
    keys = []
    for record in stack.collector_requests():
        body = record.get("body")
        key = body.get("dispatch_key") if isinstance(body, dict) else None
        if isinstance(key, dict) and key["subscription_id"] == "replay-me":
            keys.append((key["subscription_id"], key["slot"], key["source_id"]))
    return keys


def _acked(stack: StackHandle, component: str, message_id: str) -> bool:
    return any(
        line.get("event_id") == message_id and line.get("outcome") == "acked"
        for line in stack.log_lines(component)
    )


def _ledger_rows(stack: StackHandle) -> int:
    import psycopg

    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT count(*) FROM dispatches WHERE subscription_id = 'replay-me'"
        ).fetchone()
    assert row is not None
    return int(row[0])


# Each case has its own slot: Cloud Tasks remembers task names for an hour, across tests too.
@pytest.mark.parametrize(
    ("topic", "message", "last_hop", "slot"),
    [
        (
            "dispatcher-due",
            {"subscription_id": "replay-me", "slot": "2026-03-02T06:00:00Z"},
            "fn-fanout",
            "2026-03-02T06:00",
        ),
        ("dispatcher-ticks", {"time": "2026-03-02T07:00:10Z"}, "fn-select", "2026-03-02T07:00"),
    ],
)
def test_repeating_a_message_by_hand_dispatches_nothing_twice(
    stack: StackHandle,
    firestore_client: Any,
    topic: str,
    message: dict[str, str],
    last_hop: str,
    slot: str,
) -> None:
    _seed(firestore_client, slot)
    text = json.dumps(message)
    stack.gcloud_publish(topic, text)
    wait_for(lambda: len(_tasks(stack)) >= 2, timeout=60, message="the first dispatch")
    # The operator replays the same message once it was fully handled.
    replay_id = stack.gcloud_publish(topic, text, {"replayed_by": "operator"})
    wait_for(lambda: _acked(stack, last_hop, replay_id), timeout=60, message="the replay handled")
    if topic == "dispatcher-ticks":
        # select has advanced next_run_at past the slot: the replayed tick finds nothing due.
        replayed_due = [
            line
            for line in stack.log_lines("fn-select")
            if line.get("event_id") == replay_id and "published" in line
        ]
        assert replayed_due and replayed_due[0]["published"] == 0
    at = f"{slot}:00Z"
    assert sorted(_tasks(stack)) == [("replay-me", at, "search"), ("replay-me", at, "wire")]
    assert _ledger_rows(stack) == 2
