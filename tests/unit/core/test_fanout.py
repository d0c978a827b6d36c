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
    SlotTooFarAheadError,
    TasksRejectedError,
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


def test_a_missing_queue_is_permanent_once_the_others_are_created_and_a_replay_finishes(
    deps: FanoutDependencies, settings: Settings, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    news_queue = settings.queue_path("news-api")
    tasks.missing_queues.add(news_queue)
    with pytest.raises(TasksRejectedError) as caught:
        fanout(due(), message("due-1"), deps=deps)
    error = caught.value
    assert isinstance(error, PermanentError)
    refused = task_name(news_queue, DispatchKey("acme", utc("2026-01-05T09:00"), "newsapi"))
    assert error.details() == {"path": refused, "rule": "NOT_FOUND", "value": news_queue}
    assert "1 of 3" in error.message and "newsapi" in error.message
    assert ledger.states() == {"reuters": "created", "newsapi": "failed", "tweets": "created"}
    row = next(r for r in ledger.rows.values() if r.claim.source_id == "newsapi")
    assert row.error is not None and "NOT_FOUND" in row.error
    # The queue is created again; the dead letter is replayed: only the refused task is made.
    tasks.missing_queues.clear()
    tasks.calls.clear()
    fanout(due(), message("due-1-replayed"), deps=deps)
    assert tasks.calls == [refused]
    assert set(ledger.states().values()) == {"created"}


def test_a_transient_failure_beside_a_refusal_retries_first(
    deps: FanoutDependencies, settings: Settings, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    slot = utc("2026-01-05T09:00")
    tasks.missing_queues.add(settings.queue_path("news-api"))
    tasks.fail_names.add(
        task_name(settings.queue_path("social"), DispatchKey("acme", slot, "tweets"))
    )
    with pytest.raises(RetryableError):
        fanout(due(), message(), deps=deps)
    assert ledger.states() == {"reuters": "created", "newsapi": "failed", "tweets": "failed"}
    # The redelivery creates the transient one; only the refusal is left: dead-lettered now.
    tasks.fail_names.clear()
    with pytest.raises(TasksRejectedError):
        fanout(due(), message(), deps=deps)
    assert ledger.states() == {"reuters": "created", "newsapi": "failed", "tweets": "created"}


@pytest.mark.parametrize(("days_ahead", "refused"), [(29, False), (40, True)])
def test_a_slot_beyond_30_days_is_permanent_before_anything_is_written(
    deps: FanoutDependencies,
    tasks: FakeTasks,
    ledger: FakeLedger,
    days_ahead: int,
    refused: bool,
) -> None:
    slot = utc("2026-01-05T09:00") + timedelta(days=days_ahead)
    payload = due(slot=slot.isoformat().replace("+00:00", "Z"), reason="manual")
    if not refused:
        fanout(payload, message(), deps=deps)
        assert len(tasks.created) == 3
        return
    with pytest.raises(SlotTooFarAheadError) as caught:
        fanout(payload, message(), deps=deps)
    assert caught.value.details() == {
        "path": "$.slot",
        "rule": "max_schedule_ahead_30d",
        "value": "2026-02-14T09:00:00Z",
    }
    assert "40.0 days ahead" in caught.value.message
    assert tasks.calls == [] and ledger.runs == {} and ledger.rows == {}


def test_the_30_day_limit_counts_the_jitter(
    settings: Settings, store: FakeSubscriptionStore, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    # The schedule time (slot + jitter) is what Cloud Tasks checks: with the clock on the minute,
    # a slot exactly 30 days ahead is refused with any jitter, and accepted without.
    now = utc("2026-01-05T09:00")
    deps = FanoutDependencies(
        settings=settings, store=store, tasks=tasks, ledger=ledger, clock=lambda: now
    )
    slot = now + timedelta(days=30)
    payload = due(slot=slot.isoformat().replace("+00:00", "Z"), reason="manual")
    assert jitter_offset("acme", slot, 20) > timedelta(0)
    with pytest.raises(SlotTooFarAheadError):
        fanout(payload, message(), deps=deps)
    store.docs["acme"]["jitter_seconds"] = 0
    fanout(payload, message(), deps=deps)
    assert len(tasks.created) == 3


def test_a_sharded_kind_puts_each_task_on_its_keys_shard_and_a_redelivery_on_the_same(
    settings: Settings, store: FakeSubscriptionStore, tasks: FakeTasks, ledger: FakeLedger
) -> None:
    from dataclasses import replace

    from shared.dispatch_key import shard_of

    rss = replace(settings.queues["rss"], shards=4)
    sharded = replace(settings, queues={**settings.queues, "rss": rss})
    deps = FanoutDependencies(
        settings=sharded, store=store, tasks=tasks, ledger=ledger, clock=lambda: NOW
    )
    slot = utc("2026-01-05T09:00")
    fanout(due(), message("due-1"), deps=deps)
    key = DispatchKey("acme", slot, "reuters")
    queue = sharded.queue_path("rss", shard_of(key, 4))
    name = task_name(queue, key)
    assert tasks.created[name].queue == queue
    assert queue in sharded.queue_paths("rss")
    # Unsharded kinds keep their single queue.
    newsapi = DispatchKey("acme", slot, "newsapi")
    assert task_name(sharded.queue_path("news-api"), newsapi) in tasks.created
    fanout(due(), message("due-1"), deps=deps)
    assert len(tasks.created) == 3
