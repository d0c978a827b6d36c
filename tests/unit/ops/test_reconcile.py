"""Maintenance reconcile against fakes: stuck dispatches get fanout's very task, once."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from shared.config import Settings, load_settings
from shared.dispatch_key import DispatchKey, task_name
from shared.ledger.repository import SourceSpec
from shared.ops.reconcile import MAX_CONSECUTIVE_FAILURES, ReconcileResult, reconcile
from shared.usecases.fanout import FanoutDependencies, fanout
from tests.support.core import subscription_doc, utc
from tests.unit.core.fakes import FakeLedger, FakeSubscriptionStore, FakeTasks, message

SOURCES = [
    {"id": "reuters", "kind": "rss", "params": {"url": "https://example.com/r.xml"}},
    {"id": "newsapi", "kind": "news-api", "params": {"q": "acme"}},
    {"id": "tweets", "kind": "social", "params": {}},
]
SLOT = utc("2026-01-05T09:00")
NOW = SLOT + timedelta(hours=2)


@pytest.fixture
def settings() -> Settings:
    return load_settings(environ={"COLLECTOR_URL": "http://collector.test/collect"})


def seeded_store(*ids: str) -> FakeSubscriptionStore:
    store = FakeSubscriptionStore()
    for sub_id in ids:
        store.put(
            sub_id,
            subscription_doc(
                sub_id,
                schedule={"every": 300},
                start=SLOT,
                shard_count=16,
                sources=SOURCES,
                jitter_seconds=20,
            ),
        )
    return store


def crash_after_claim(
    ledger: FakeLedger, settings: Settings, sub_id: str, reason: str = "schedule"
) -> list[str]:
    """What fanout leaves behind when it dies between claiming and creating: the task names."""
    run = ledger.record_run(sub_id, SLOT, reason, "due-1")
    specs = []
    for source in SOURCES:
        queue = settings.queue_path(str(source["kind"]))
        name = task_name(queue, DispatchKey(sub_id, SLOT, str(source["id"])))
        specs.append(SourceSpec(str(source["id"]), str(source["kind"]), name, queue))
    ledger.claim_dispatches(run, specs)
    return [s.task_name for s in specs]


def run(
    ledger: FakeLedger,
    store: FakeSubscriptionStore,
    tasks: FakeTasks,
    settings: Settings,
    dry_run: bool = False,
) -> ReconcileResult:
    return reconcile(
        ledger,
        store,
        tasks,
        settings=settings,
        now=NOW,
        older_than=timedelta(minutes=60),
        dry_run=dry_run,
    )


def test_stuck_claims_get_exactly_the_tasks_fanout_builds_and_a_second_run_does_nothing(
    settings: Settings,
) -> None:
    # What fanout itself would have created for this run, at the same instant.
    reference = FakeTasks()
    deps = FanoutDependencies(
        settings=settings,
        store=seeded_store("acme"),
        tasks=reference,
        ledger=FakeLedger(),
        clock=lambda: NOW,
    )
    fanout(
        {"subscription_id": "acme", "slot": "2026-01-05T09:00:00Z", "reason": "schedule"},
        message("due-1"),
        deps=deps,
    )

    store, ledger, tasks = seeded_store("acme"), FakeLedger(), FakeTasks()
    crash_after_claim(ledger, settings, "acme")
    first = run(ledger, store, tasks, settings)
    assert first.as_dict() == {
        "stuck": 3,
        "recreated": 3,
        "already_existed": 0,
        "failed": 0,
        "skipped": 0,
        "deferred": 0,
    }
    assert tasks.created == reference.created  # name, queue, url, body, schedule, OIDC
    assert ledger.states() == {"reuters": "created", "newsapi": "created", "tweets": "created"}
    assert store.reads == 1  # one read for the subscription's three dispatches

    second = run(ledger, store, tasks, settings)
    assert second.as_dict() == ReconcileResult().as_dict()
    assert len(tasks.calls) == 3


def test_already_existing_task_is_done(settings: Settings) -> None:
    store, ledger, tasks = seeded_store("acme"), FakeLedger(), FakeTasks()
    names = crash_after_claim(ledger, settings, "acme")
    # The first attempt's create landed before the crash: the name is taken.
    tasks.created[names[0]] = None  # type: ignore[assignment]
    result = run(ledger, store, tasks, settings)
    assert (result.recreated, result.already_existed, result.failed) == (2, 1, 0)
    assert set(ledger.states().values()) == {"created"}


def test_failed_create_is_marked_and_retried_next_run(settings: Settings) -> None:
    store, ledger, tasks = seeded_store("acme"), FakeLedger(), FakeTasks()
    names = crash_after_claim(ledger, settings, "acme")
    tasks.fail_names.add(names[1])
    result = run(ledger, store, tasks, settings)
    assert (result.recreated, result.failed) == (2, 1)
    row = next(r for r in ledger.rows.values() if r.claim.task_name == names[1])
    assert (row.claim.state, row.claim.attempts) == ("failed", 1)
    assert row.error is not None and "injected failure" in row.error

    tasks.fail_names.clear()
    again = run(ledger, store, tasks, settings)
    assert (again.stuck, again.recreated, again.failed) == (1, 1, 0)
    assert set(ledger.states().values()) == {"created"}


def test_dry_run_creates_and_marks_nothing(settings: Settings) -> None:
    store, ledger, tasks = seeded_store("acme"), FakeLedger(), FakeTasks()
    crash_after_claim(ledger, settings, "acme")
    result = run(ledger, store, tasks, settings, dry_run=True)
    assert (result.stuck, result.recreated) == (3, 3)
    assert tasks.calls == []
    assert set(ledger.states().values()) == {"claimed"}


def test_skipped_rows_stay_as_they_are_and_are_skipped_again(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store, ledger, tasks = seeded_store("acme", "ended", "gone"), FakeLedger(), FakeTasks()
    for sub_id in ("acme", "ended", "gone"):
        crash_after_claim(ledger, settings, sub_id)
    store.docs["acme"]["sources"] = SOURCES[:2]  # tweets removed since the claim
    store.docs["ended"]["ends_at"] = SLOT  # the slot is at ends_at now: never dispatched
    store.delete("gone")
    with caplog.at_level(logging.WARNING, logger="shared.ops.reconcile"):
        first = run(ledger, store, tasks, settings)
    assert (first.stuck, first.recreated, first.skipped) == (9, 2, 7)
    reasons = sorted({getattr(r, "skip_reason", "") for r in caplog.records})
    assert reasons == ["slot at or after ends_at", "source removed", "subscription gone"]
    assert store.reads == 3  # one per subscription
    second = run(ledger, store, tasks, settings)
    assert (second.stuck, second.recreated, second.skipped) == (7, 0, 7)
    assert len(tasks.calls) == 2


def test_stops_creating_when_cloud_tasks_keeps_failing(settings: Settings) -> None:
    store, ledger, tasks = seeded_store("acme", "beta"), FakeLedger(), FakeTasks()
    names = crash_after_claim(ledger, settings, "acme") + crash_after_claim(
        ledger, settings, "beta"
    )
    tasks.fail_names.update(names)
    result = run(ledger, store, tasks, settings)
    assert (result.failed, result.deferred) == (
        MAX_CONSECUTIVE_FAILURES,
        6 - MAX_CONSECUTIVE_FAILURES,
    )
    assert len(tasks.calls) == MAX_CONSECUTIVE_FAILURES
    assert store.reads == 1  # beta was not even read
