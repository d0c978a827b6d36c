"""Chaining on run-completed: one email task per (after-run delivery, recipient), once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared import contracts
from shared.dal.cloud_tasks import TaskCreateError
from shared.email_settings import load_email_settings
from shared.errors import InvalidRequestError, TaskRejectedError
from shared.usecases.plan_deliveries import PlanDependencies, plan_after_run
from tests.unit.deliveries.fakes import NOW, FakeEmailStore, FakeSubscriptions, FakeTasks
from tests.unit.deliveries.test_deliver_use_case import subscription

EVENT: dict[str, Any] = {
    "run_id": 3,
    "subscription_id": "acme",
    "slot": "2026-03-09T11:45:00Z",
    "reason": "schedule",
    "succeeded": False,
    "completed_at": "2026-03-09T11:45:40Z",
    "counts": {"succeeded": 1, "failed": 1, "skipped": 0, "lost": 0},
    "items": 7,
}


def two_recipients() -> Any:
    return subscription(
        deliveries=[
            {
                "id": "alert",
                "channel": "email",
                "to": ["a@acme.example", "b@acme.example"],
                "schedule": {"after": "run"},
                "format": "alert",
            },
            {
                "id": "digest",
                "channel": "email",
                "to": ["pr@acme.example"],
                "schedule": {"cron": "0 8 * * 1-5", "timezone": "America/New_York"},
                "format": "digest",
            },
        ]
    )


def deps(store: FakeEmailStore, tasks: FakeTasks, subs: FakeSubscriptions) -> PlanDependencies:
    return PlanDependencies(
        store=store,
        tasks=tasks,
        subscriptions=subs,
        settings=load_email_settings(environ={}),
        project="p",
        location="l",
        clock=lambda: NOW,
    )


def test_one_task_per_recipient_of_after_run_deliveries_only() -> None:
    contracts.validate("run-completed", EVENT)
    store, tasks = FakeEmailStore(), FakeTasks()
    result = plan_after_run(EVENT, deps(store, tasks, FakeSubscriptions(two_recipients())))
    assert sorted(k.recipient for k in result.created) == ["a@acme.example", "b@acme.example"]
    assert len(tasks.created) == 2
    for request in tasks.created.values():
        assert request.queue == "projects/p/locations/l/queues/email-deliveries"
        assert request.url == request.audience == "http://127.0.0.1:8091/"
        assert request.service_account.startswith("email-invoker@")
        body = json.loads(request.body)
        contracts.validate("email-task", body)  # what the deliver function will accept
        assert body["run_id"] == 3 and body["format"] == "alert"
        assert body["delivery_key"]["slot"] == "2026-03-09T11:45:00Z"
    assert {r.task_state for r in store.rows.values()} == {"created"}


def test_three_duplicate_events_create_nothing_more() -> None:
    store, tasks = FakeEmailStore(), FakeTasks()
    wiring = deps(store, tasks, FakeSubscriptions(two_recipients()))
    results = [plan_after_run(EVENT, wiring) for _ in range(3)]
    assert [len(r.created) for r in results] == [2, 0, 0]
    assert [len(r.existing) for r in results] == [0, 2, 2]
    assert tasks.calls == 2 and len(store.rows) == 2


def test_a_failed_create_is_recorded_raised_and_redone_under_the_same_name() -> None:
    store = FakeEmailStore()
    tasks = FakeTasks(TaskCreateError("t", "UNAVAILABLE"))
    wiring = deps(store, tasks, FakeSubscriptions(two_recipients()))
    with pytest.raises(TaskCreateError):
        plan_after_run(EVENT, wiring)
    failed = [r for r in store.rows.values() if r.task_state == "failed"]
    assert len(failed) == 1 and "UNAVAILABLE" in (failed[0].task_error or "")
    # Pub/Sub redelivers the event: both recipients end up with exactly one task.
    plan_after_run(EVENT, wiring)
    assert len(tasks.created) == 2
    assert failed[0].task_name in tasks.created


def test_a_refusal_no_retry_can_change_is_permanent() -> None:
    tasks = FakeTasks(TaskRejectedError("t", "NOT_FOUND", "queue email-deliveries missing"))
    with pytest.raises(TaskRejectedError):
        plan_after_run(EVENT, deps(FakeEmailStore(), tasks, FakeSubscriptions(two_recipients())))


def test_nothing_to_plan_and_a_malformed_document() -> None:
    store, tasks = FakeEmailStore(), FakeTasks()
    assert plan_after_run(EVENT, deps(store, tasks, FakeSubscriptions())).skipped == (
        "subscription deleted"
    )
    plain = subscription(deliveries=[])
    assert plan_after_run(EVENT, deps(store, tasks, FakeSubscriptions(plain))).skipped == (
        "no after-run deliveries"
    )
    broken = subscription(deliveries=[{"id": "Bad"}])
    with pytest.raises(InvalidRequestError, match="malformed"):
        plan_after_run(EVENT, deps(store, tasks, FakeSubscriptions(broken)))
    assert tasks.calls == 0
