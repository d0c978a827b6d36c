"""The whole pipeline through the real push subscriptions, typed by hand with gcloud.

tick (``gcloud pubsub topics publish dispatcher-ticks``) → select function → ``dispatcher-due``
→ fanout function → Cloud Tasks emulator → collector stub. Nothing is called in-process.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

from tests.support.core import subscription_doc, utc
from tests.support.polling import wait_for
from tests.support.stack import PulledMessage, StackHandle

pytestmark = pytest.mark.e2e

T = TypeVar("T")
SLOT = utc("2026-01-05T09:00")
SOURCES = [
    {"id": "reuters", "kind": "rss", "params": {"url": "https://example.com/feed.xml"}},
    {"id": "acme-query", "kind": "news-api", "params": {"q": "acme"}},
]


@pytest.fixture(autouse=True)
def clean(stack: StackHandle) -> None:
    stack.wipe_firestore()
    stack.wipe_ledger()
    stack.clear_collector()
    stack.drain(["dispatcher-due-dlq-sub", "dispatcher-ticks-dlq-sub"])


def wait(stack: StackHandle, condition: Callable[[], T | None], what: str) -> T:
    """wait_for, but a timeout shows the functions' logs: the first place to look."""
    try:
        return wait_for(condition, timeout=60, message=what)
    except AssertionError as exc:
        tails = "".join(
            f"\n--- {c} ---\n{stack.log(c)[-3000:]}" for c in ("fn-select", "fn-fanout")
        )
        raise AssertionError(f"{exc}{tails}") from None


def seed(client: Any, docs: dict[str, dict[str, Any]]) -> None:
    batch = client.batch()
    for doc_id, data in docs.items():
        batch.set(client.collection("subscriptions").document(doc_id), data)
    batch.commit()


def collected(stack: StackHandle, prefix: str) -> list[dict[str, Any]]:
    # Other modules share the collector (and their tasks may still be retrying): only dispatches.
    return [
        r
        for r in stack.collector_requests()
        if isinstance(r.get("body"), dict)
        and isinstance(r["body"].get("dispatch_key"), dict)
        and r["body"]["dispatch_key"]["subscription_id"].startswith(prefix)
    ]


def ledger_states(stack: StackHandle, prefix: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT subscription_id, source_id, state FROM dispatches "
            "WHERE subscription_id LIKE %s",
            (prefix + "%",),
        ).fetchall()
    return [(str(a), str(b), str(c)) for a, b, c in rows]


def test_a_hand_typed_tick_reaches_the_collector_once_per_source(
    stack: StackHandle, firestore_client: Any
) -> None:
    docs = {
        f"e2e-{i}": subscription_doc(
            f"e2e-{i}",
            schedule={"every": 300},
            start=SLOT,
            shard_count=16,
            sources=SOURCES,
            jitter_seconds=0,
        )
        for i in range(3)
    }
    seed(firestore_client, docs)
    tick = json.dumps({"time": "2026-01-05T09:00:05Z"})
    # The scheduler retried: the same minute's tick arrives twice.
    stack.gcloud_publish("dispatcher-ticks", tick)
    stack.gcloud_publish("dispatcher-ticks", tick)
    records = wait(
        stack,
        lambda: r if len(r := collected(stack, "e2e-")) >= 6 else None,
        "six tasks at the collector",
    )
    wait(
        stack,
        lambda: sorted(s for _, _, s in ledger_states(stack, "e2e-")) == ["created"] * 6,
        "six created ledger rows",
    )
    keys = Counter(
        (b["dispatch_key"]["subscription_id"], b["slot"], b["source"]["id"])
        for b in (r["body"] for r in collected(stack, "e2e-"))
    )
    assert keys == Counter(
        {(sid, "2026-01-05T09:00:00Z", s["id"]): 1 for sid in docs for s in SOURCES}
    )
    first = records[0]
    assert first["method"] == "POST"
    assert first["headers"]["authorization"].startswith("Bearer ")
    if "auth" in first:  # the collector stub verifies OIDC when it has the emulator's certs
        assert first["auth"]["verified"], first["auth"]
    assert first["body"]["reason"] == "schedule"
    # next_run_at moved on, to the following slot.
    snapshot = firestore_client.collection("subscriptions").document("e2e-0").get()
    assert snapshot.to_dict()["next_run_at"] == SLOT + timedelta(minutes=5)
    # fanout acked each due message with one decision line, and never failed on one of ours.
    ours = [
        line
        for line in stack.log_lines("fn-fanout")
        if str(line.get("subscription_id", "")).startswith("e2e-")
    ]
    assert [line for line in ours if line["severity"] == "ERROR"] == []
    dispatched = Counter(
        line["subscription_id"] for line in ours if line.get("decision") == "dispatched"
    )
    assert set(dispatched) == set(docs)
    # Nothing of ours was dead-lettered (other modules' leftovers may pass through the DLQs).
    assert [m for m in stack.pull("dispatcher-ticks-dlq-sub") if m.data == tick.encode()] == []
    assert [m for m in stack.pull("dispatcher-due-dlq-sub") if b'"e2e-' in m.data] == []


def test_a_hand_typed_due_message_is_a_manual_run_now(
    stack: StackHandle, firestore_client: Any
) -> None:
    seed(
        firestore_client,
        {
            "e2e-manual": subscription_doc(
                "e2e-manual",
                schedule={"cron": "0 9 * * 1", "timezone": "Europe/Paris"},
                start=SLOT,
                shard_count=16,
                sources=SOURCES[:1],
                paused=True,
            )
        },
    )
    before = datetime.now(UTC).replace(second=0, microsecond=0)
    stack.gcloud_publish("dispatcher-due", json.dumps({"subscription_id": "e2e-manual"}))
    [record] = wait(stack, lambda: collected(stack, "e2e-manual"), "the manual task")
    body = record["body"]
    assert body["reason"] == "manual"
    slot = datetime.fromisoformat(body["slot"].replace("Z", "+00:00"))
    assert before <= slot <= datetime.now(UTC)
    assert slot.second == 0


def test_a_due_message_for_an_unknown_subscription_is_dead_lettered_with_its_reason(
    stack: StackHandle,
) -> None:
    stack.gcloud_publish(
        "dispatcher-due",
        json.dumps({"subscription_id": "e2e-ghost", "slot": "2026-01-05T09:00:00Z"}),
    )
    letters: list[PulledMessage] = []

    def ghost_letters() -> list[PulledMessage]:
        letters.extend(stack.pull("dispatcher-due-dlq-sub"))
        return [m for m in letters if json.loads(m.data)["subscription_id"] == "e2e-ghost"]

    # Pub/Sub is at-least-once: a redelivered push may be dead-lettered twice; each says why.
    for letter in wait(stack, ghost_letters, "a dead letter"):
        assert letter.attributes["dlq_reason_class"] == "UnknownSubscriptionError"
        assert letter.attributes["dlq_path"] == "$.subscription_id"
    assert collected(stack, "e2e-ghost") == []
