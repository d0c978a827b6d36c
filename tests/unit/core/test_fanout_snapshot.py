"""One Firestore read per due subscription: select's snapshot in the due message, fanout's use of
it, its staleness window (a pause racing a due message), and two ledger round trips per message."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from shared.config import Settings, load_settings
from shared.contracts import get_contract, validate
from shared.dispatch_key import DispatchKey
from shared.errors import SchemaValidationError
from shared.instants import format_instant
from shared.usecases.fanout import FanoutDependencies, FanoutResult, fanout, snapshot_usable
from shared.usecases.select_due import (
    MAX_SNAPSHOT_MESSAGE_BYTES,
    SelectDependencies,
    select_due,
)
from shared.worker.checks import subscription_skip_reason
from tests.support.core import subscription_doc, utc

from .fakes import FakeLedger, FakePublisher, FakeSubscriptionStore, FakeTasks, message

SLOT = utc("2026-01-05T09:00")
SOURCES = [
    {"id": "reuters", "kind": "rss", "params": {"url": "https://example.com/r.xml"}},
    {"id": "newsapi", "kind": "news-api", "params": {"q": "acme"}},
]


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def settings() -> Settings:
    return load_settings(environ={"COLLECTOR_URL": "http://collector.test/collect"}, shard_count=4)


@pytest.fixture
def store() -> FakeSubscriptionStore:
    s = FakeSubscriptionStore()
    s.put(
        "acme",
        subscription_doc(
            "acme",
            schedule={"every": 300},
            start=SLOT,
            shard_count=4,
            sources=SOURCES,
            jitter_seconds=20,
            ends_at=utc("2027-01-01T00:00"),
        ),
    )
    return s


@pytest.fixture
def clock() -> Clock:
    return Clock(SLOT + timedelta(seconds=2))


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


@pytest.fixture
def tasks() -> FakeTasks:
    return FakeTasks()


def select(settings: Settings, store: FakeSubscriptionStore, clock: Clock) -> list[dict[str, Any]]:
    """Tick select at SLOT; the due messages it published, decoded."""
    publisher = FakePublisher()
    deps = SelectDependencies(settings=settings, store=store, publisher=publisher, clock=clock)
    select_due({"time": format_instant(SLOT)}, message("tick-1"), deps=deps)
    return [json.loads(m.data) for m in publisher.messages]


def run_fanout(
    payload: dict[str, Any],
    settings: Settings,
    store: FakeSubscriptionStore,
    tasks: FakeTasks,
    ledger: FakeLedger,
    clock: Clock,
) -> FanoutResult:
    validate("due.v1.json", payload)  # what the handler does before the use case
    deps = FanoutDependencies(
        settings=settings, store=store, tasks=tasks, ledger=ledger, clock=clock
    )
    return fanout(payload, message("due-1", publish_time=clock()), deps=deps)


def test_select_carries_the_snapshot_it_read_and_the_message_is_valid(
    settings: Settings, store: FakeSubscriptionStore, clock: Clock
) -> None:
    [body] = select(settings, store, clock)
    validate("due.v1.json", body)
    snapshot = body["subscription"]
    assert snapshot["read_at"] == format_instant(clock.now)
    assert snapshot["sources"] == SOURCES
    assert snapshot["schedule"] == {"every": 300}
    assert snapshot["jitter_seconds"] == 20
    assert snapshot["ends_at"] == "2027-01-01T00:00:00Z"
    assert snapshot["name"] == "Subscription acme"
    assert "updated_at" in snapshot
    assert len(json.dumps(body)) < 2048


def test_a_scheduled_message_with_a_fresh_snapshot_costs_no_read_and_two_ledger_trips(
    settings: Settings,
    store: FakeSubscriptionStore,
    tasks: FakeTasks,
    ledger: FakeLedger,
    clock: Clock,
) -> None:
    [body] = select(settings, store, clock)
    reads_by_select = store.reads
    clock.now += timedelta(seconds=5)
    result = run_fanout(body, settings, store, tasks, ledger, clock)
    assert result.subscription_read == "snapshot"
    assert store.reads == reads_by_select
    assert sorted(result.created) == ["newsapi", "reuters"]
    assert ledger.round_trips == 2
    # The tasks are the ones a Firestore read would have produced.
    again = FakeTasks()
    del body["subscription"]
    fresh = run_fanout(body, settings, store, again, FakeLedger(), clock)
    assert fresh.subscription_read == "firestore"
    assert sorted((r.name, r.body, r.schedule_time) for r in tasks.created.values()) == sorted(
        (r.name, r.body, r.schedule_time) for r in again.created.values()
    )


@pytest.mark.parametrize("reason", ["manual", "replay"])
def test_manual_and_replayed_messages_read_firestore(
    reason: str,
    settings: Settings,
    store: FakeSubscriptionStore,
    tasks: FakeTasks,
    ledger: FakeLedger,
    clock: Clock,
) -> None:
    [body] = select(settings, store, clock)
    result = run_fanout({**body, "reason": reason}, settings, store, tasks, ledger, clock)
    assert result.subscription_read == "firestore"


def test_an_old_snapshot_reads_firestore(
    settings: Settings,
    store: FakeSubscriptionStore,
    tasks: FakeTasks,
    ledger: FakeLedger,
    clock: Clock,
) -> None:
    [body] = select(settings, store, clock)
    clock.now += timedelta(seconds=settings.snapshot_max_age_seconds + 1)
    result = run_fanout(body, settings, store, tasks, ledger, clock)
    assert result.subscription_read == "firestore"


def test_a_hand_typed_message_still_reads_firestore(
    settings: Settings,
    store: FakeSubscriptionStore,
    tasks: FakeTasks,
    ledger: FakeLedger,
    clock: Clock,
) -> None:
    result = run_fanout({"subscription_id": "acme"}, settings, store, tasks, ledger, clock)
    assert result.subscription_read == "firestore"
    assert sorted(result.created) == ["newsapi", "reuters"]


def test_snapshot_age_rules() -> None:
    now = utc("2026-01-05T09:10")
    fresh = {"read_at": "2026-01-05T09:06:00Z"}
    assert snapshot_usable(fresh, "schedule", now, 300)
    assert snapshot_usable(fresh, "catch-up", now, 300)
    assert not snapshot_usable(fresh, "manual", now, 300)
    assert not snapshot_usable(fresh, "replay", now, 300)
    assert not snapshot_usable(fresh, "schedule", now, 0)  # turned off
    assert not snapshot_usable({"read_at": "2026-01-05T09:04:59Z"}, "schedule", now, 300)
    # A read_at far in the future is no licence to trust the snapshot forever.
    assert not snapshot_usable({"read_at": "2026-01-06T09:00:00Z"}, "schedule", now, 300)


def test_a_pause_racing_a_due_message_costs_a_skipped_task_not_a_collection(
    settings: Settings,
    store: FakeSubscriptionStore,
    tasks: FakeTasks,
    ledger: FakeLedger,
    clock: Clock,
) -> None:
    """The documented staleness window: select read the document (active) and published; an
    operator pauses the subscription; fanout, trusting the fresh snapshot, still creates the
    slot's tasks; each task's re-check at execution (the worker kit) finds it paused and skips.
    The next tick does not select the paused subscription at all."""
    [body] = select(settings, store, clock)
    store.docs["acme"]["paused"] = True  # the operator's pause, after select's read
    clock.now += timedelta(seconds=10)

    result = run_fanout(body, settings, store, tasks, ledger, clock)
    assert result.subscription_read == "snapshot"
    assert sorted(result.created) == ["newsapi", "reuters"]

    for request in tasks.created.values():
        task = json.loads(request.body)
        key = DispatchKey(task["subscription"]["id"], SLOT, task["source"]["id"])
        assert subscription_skip_reason(store.get("acme"), key, task["reason"]) == "paused"

    # Had the snapshot been older than the window, fanout would have read the pause itself.
    clock.now += timedelta(seconds=settings.snapshot_max_age_seconds)
    late = run_fanout(
        {**body, "slot": "2026-01-05T09:05:00Z"}, settings, store, FakeTasks(), FakeLedger(), clock
    )
    assert late.subscription_read == "firestore"
    assert late.skipped == "paused"


def test_a_snapshot_too_large_for_the_message_is_left_out(
    settings: Settings, store: FakeSubscriptionStore, clock: Clock
) -> None:
    big = [
        {"id": f"s{i}", "kind": "rss", "params": {"url": "https://example.com/" + "x" * 400}}
        for i in range(60)
    ]
    store.put(
        "acme",
        subscription_doc("acme", schedule={"every": 300}, start=SLOT, shard_count=4, sources=big),
    )
    [body] = select(settings, store, clock)
    assert "subscription" not in body
    assert len(json.dumps(big)) > MAX_SNAPSHOT_MESSAGE_BYTES


def test_the_contract_keeps_hand_typed_messages_valid_and_the_snapshot_closed() -> None:
    validate("due.v1.json", {"subscription_id": "x"})
    for example in get_contract("due.v1.json").examples:
        validate("due.v1.json", example)
    snapshot = {
        "read_at": "2026-01-05T09:00:01Z",
        "name": "Acme",
        "schedule": {"every": 300},
        "sources": [{"id": "feed", "kind": "rss", "params": {}}],
    }
    validate("due.v1.json", {"subscription_id": "x", "subscription": snapshot})
    for bad in (
        {**snapshot, "pasued": True},
        {k: v for k, v in snapshot.items() if k != "read_at"},
        {**snapshot, "sources": []},
        {**snapshot, "read_at": "yesterday"},
    ):
        with pytest.raises(SchemaValidationError):
            validate("due.v1.json", {"subscription_id": "x", "subscription": bad})
