"""fanout against in-memory fakes: one task per dispatch key, whatever is redelivered or fails."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest

from shared.config import Settings, load_settings
from shared.contracts import validate
from shared.dispatch_key import DispatchKey, task_name
from shared.errors import PermanentError, RetryableError, UnknownSubscriptionError
from shared.scheduling import jitter_offset
from shared.usecases.fanout import (
    FanoutDependencies,
    InvalidSubscriptionDocumentError,
    UnknownSourceKindError,
    fanout,
)
from tests.support.core import subscription_doc, utc

from .fakes import FakeLedger, FakeSubscriptionStore, FakeTasks, message

SOURCES = [
    {"id": "reuters", "kind": "rss", "params": {"url": "https://example.com/r.xml"}},
    {"id": "newsapi", "kind": "news-api", "params": {"q": "acme"}},
    {"id": "tweets", "kind": "social", "params": {}},
]
NOW = utc("2026-01-05T09:00") + timedelta(seconds=3)


@pytest.fixture
def settings() -> Settings:
    return load_settings(environ={"COLLECTOR_URL": "http://collector.test/collect"})


@pytest.fixture
def store() -> FakeSubscriptionStore:
    s = FakeSubscriptionStore()
    s.put(
        "acme",
        subscription_doc(
            "acme",
            schedule={"every": 300},
            start=utc("2026-01-05T09:00"),
            shard_count=16,
            sources=SOURCES,
            jitter_seconds=20,
        ),
    )
    return s


@pytest.fixture
def tasks() -> FakeTasks:
    return FakeTasks()


@pytest.fixture
def ledger() -> FakeLedger:
    return FakeLedger()


@pytest.fixture
def deps(
    settings: Settings, store: FakeSubscriptionStore, tasks: FakeTasks, ledger: FakeLedger
) -> FanoutDependencies:
    return FanoutDependencies(
        settings=settings, store=store, tasks=tasks, ledger=ledger, clock=lambda: NOW
    )


def due(
    slot: str = "2026-01-05T09:00:00Z", reason: str = "schedule", **extra: object
) -> dict[str, object]:
    return {"subscription_id": "acme", "slot": slot, "reason": reason, **extra}


def test_one_task_per_source_named_by_the_dispatch_key_on_its_kinds_queue(
    deps: FanoutDependencies, settings: Settings, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    fanout(due(), message("due-1"), deps=deps)
    slot = utc("2026-01-05T09:00")
    assert len(tasks.created) == 3
    for source in SOURCES:
        queue = settings.queue_path(str(source["kind"]))
        name = task_name(queue, DispatchKey("acme", slot, str(source["id"])))
        request = tasks.created[name]
        assert request.queue == queue
        assert request.url == "http://collector.test/collect"
        assert request.audience == request.url
        assert request.service_account == settings.collector_service_account
        assert request.schedule_time == slot + jitter_offset("acme", slot, 20)
        body = json.loads(request.body)
        validate("collector-task.v1.json", body)
        assert body["dispatch_key"] == {
            "subscription_id": "acme",
            "slot": "2026-01-05T09:00:00Z",
            "source_id": source["id"],
        }
        assert body["source"] == source
        assert body["task_name"] == name.rsplit("/", 1)[-1]
        assert body["reason"] == "schedule"
    assert ledger.states() == {"reuters": "created", "newsapi": "created", "tweets": "created"}


def test_redelivered_due_messages_create_nothing_more(
    deps: FanoutDependencies, tasks: FakeTasks
) -> None:
    for attempt in range(3):
        fanout(due(), message(f"due-{attempt}"), deps=deps)
    assert len(tasks.calls) == 3


def test_a_claim_left_by_a_crash_is_recreated_and_already_exists_counts_as_done(
    deps: FanoutDependencies, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    fanout(due(), message(), deps=deps)
    # Simulate a crash after the creates, before mark_created: rows stay claimed.
    for row in ledger.rows.values():
        row.claim = type(row.claim)(**{**row.claim.__dict__, "state": "claimed"})
    fanout(due(), message(), deps=deps)
    assert len(tasks.created) == 3  # same names: ALREADY_EXISTS, nothing new
    assert len(tasks.calls) == 6
    assert set(ledger.states().values()) == {"created"}


def test_a_failed_create_marks_it_failed_retries_and_the_redelivery_creates_only_it(
    deps: FanoutDependencies, settings: Settings, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    slot = utc("2026-01-05T09:00")
    failing = task_name(settings.queue_path("news-api"), DispatchKey("acme", slot, "newsapi"))
    tasks.fail_names.add(failing)
    with pytest.raises(RetryableError, match="1 of 3"):
        fanout(due(), message(), deps=deps)
    assert ledger.states() == {"reuters": "created", "newsapi": "failed", "tweets": "created"}
    failed = next(r for r in ledger.rows.values() if r.claim.source_id == "newsapi")
    assert failed.claim.attempts == 1 and failed.error is not None
    tasks.fail_names.clear()
    tasks.calls.clear()
    fanout(due(), message(), deps=deps)
    assert tasks.calls == [failing]
    assert set(ledger.states().values()) == {"created"}


def test_a_due_message_without_slot_is_a_manual_run_at_the_publish_minute(
    deps: FanoutDependencies, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    published = utc("2026-01-05T09:17") + timedelta(seconds=42, microseconds=5)
    result = fanout({"subscription_id": "acme"}, message(publish_time=published), deps=deps)
    assert result.slot == utc("2026-01-05T09:17")
    assert result.reason == "manual"
    bodies = [json.loads(r.body) for r in tasks.created.values()]
    assert {b["slot"] for b in bodies} == {"2026-01-05T09:17:00Z"}
    assert {b["reason"] for b in bodies} == {"manual"}
    assert [r.reason for r in ledger.runs.values()] == ["manual"]


def test_a_slot_with_seconds_is_the_same_minute_and_the_same_keys(
    deps: FanoutDependencies, tasks: FakeTasks
) -> None:
    fanout(due("2026-01-05T09:00:00Z"), message(), deps=deps)
    fanout(due("2026-01-05T10:00:30+01:00", reason="replay"), message(), deps=deps)
    assert len(tasks.created) == 3


def test_an_unknown_subscription_is_permanent(deps: FanoutDependencies) -> None:
    with pytest.raises(UnknownSubscriptionError):
        fanout({"subscription_id": "ghost", "slot": "2026-01-05T09:00:00Z"}, message(), deps=deps)


def test_a_subscription_without_sources_is_permanent(
    deps: FanoutDependencies, store: FakeSubscriptionStore, tasks: FakeTasks
) -> None:
    store.docs["acme"]["sources"] = []
    with pytest.raises(InvalidSubscriptionDocumentError) as caught:
        fanout(due(), message(), deps=deps)
    assert caught.value.details()["path"] == "sources"
    assert tasks.calls == []


def test_an_unknown_source_kind_is_permanent_before_anything_is_claimed(
    deps: FanoutDependencies, store: FakeSubscriptionStore, ledger: FakeLedger
) -> None:
    store.docs["acme"]["sources"] = [*SOURCES, {"id": "fax", "kind": "fax", "params": {}}]
    with pytest.raises(UnknownSourceKindError) as caught:
        fanout(due(), message(), deps=deps)
    assert isinstance(caught.value, PermanentError)
    assert ledger.rows == {}


@pytest.mark.parametrize("reason", ["schedule", "catch-up"])
def test_a_paused_subscription_skips_scheduled_messages(
    deps: FanoutDependencies, store: FakeSubscriptionStore, tasks: FakeTasks, reason: str
) -> None:
    store.docs["acme"]["paused"] = True
    result = fanout(due(reason=reason), message(), deps=deps)
    assert result.skipped == "paused"
    assert tasks.calls == []


@pytest.mark.parametrize("reason", ["manual", "replay"])
def test_a_paused_subscription_still_runs_explicit_requests(
    deps: FanoutDependencies, store: FakeSubscriptionStore, tasks: FakeTasks, reason: str
) -> None:
    store.docs["acme"]["paused"] = True
    fanout(due(reason=reason), message(), deps=deps)
    assert len(tasks.created) == 3


@pytest.mark.parametrize("reason", ["schedule", "catch-up", "manual", "replay"])
def test_slots_at_or_after_ends_at_never_dispatch(
    deps: FanoutDependencies, store: FakeSubscriptionStore, tasks: FakeTasks, reason: str
) -> None:
    store.docs["acme"]["ends_at"] = utc("2026-01-05T09:00")
    assert fanout(due(reason=reason), message(), deps=deps).skipped == "slot at or after ends_at"
    assert tasks.calls == []


@pytest.mark.parametrize("reason", ["manual", "replay"])
def test_an_expired_subscription_runs_nothing_by_hand(
    deps: FanoutDependencies, store: FakeSubscriptionStore, tasks: FakeTasks, reason: str
) -> None:
    store.docs["acme"].update(status="expired", next_run_at=None)
    assert fanout(due(reason=reason), message(), deps=deps).skipped == "expired"
    assert tasks.calls == []


@pytest.mark.parametrize("reason", ["schedule", "catch-up"])
def test_the_last_slot_runs_although_select_already_marked_the_subscription_expired(
    deps: FanoutDependencies, store: FakeSubscriptionStore, tasks: FakeTasks, reason: str
) -> None:
    store.docs["acme"].update(status="expired", next_run_at=None, ends_at=utc("2026-01-05T09:01"))
    fanout(due(reason=reason), message(), deps=deps)
    assert len(tasks.created) == 3


def test_dry_run_creates_and_records_nothing(
    deps: FanoutDependencies, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    result = fanout(due(dry_run=True), message(), deps=deps)
    assert result.skipped == "dry-run"
    assert tasks.calls == [] and ledger.runs == {}


def test_fanout_reads_the_subscription_once(
    deps: FanoutDependencies, store: FakeSubscriptionStore
) -> None:
    fanout(due(), message(), deps=deps)
    assert store.reads == 1


def test_the_default_jitter_applies_without_jitter_seconds(
    deps: FanoutDependencies, store: FakeSubscriptionStore, settings: Settings, tasks: FakeTasks
) -> None:
    del store.docs["acme"]["jitter_seconds"]
    fanout(due(), message(), deps=deps)
    slot = datetime(2026, 1, 5, 9, tzinfo=UTC)
    expected = slot + jitter_offset("acme", slot, settings.default_jitter_seconds)
    assert {r.schedule_time for r in tasks.created.values()} == {expected}


def test_one_structured_decision_line_per_due_message(
    deps: FanoutDependencies, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every extra field is built into a record
    fanout(due(), message(), deps=deps)
    fanout(due(), message(), deps=deps)
    decisions = [r for r in caplog.records if hasattr(r, "decision")]
    assert [r.__dict__["decision"] for r in decisions] == ["dispatched", "dispatched"]
    assert {r.__dict__["subscription_id"] for r in decisions} == {"acme"}
    assert [len(r.__dict__["created_sources"]) for r in decisions] == [3, 0]
    assert [len(r.__dict__["done_sources"]) for r in decisions] == [0, 3]
