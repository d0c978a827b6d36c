"""The results use case on a fake ledger: unknown keys, completion publishing and its failures."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import load_settings
from shared.dal.records import OutboundMessage
from shared.envelope import PushMessage
from shared.errors import DependencyUnavailableError
from shared.ledger.repository import OutcomeCounts, OutcomeRecorded, RunCompletion
from shared.outcomes import Report
from shared.usecases.results import (
    CompletionPendingError,
    ResultsDependencies,
    UnknownDispatchError,
    record_result,
)

SLOT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
PUBLISHED = datetime(2026, 1, 5, 9, 0, 40, tzinfo=UTC)
KEY = {"subscription_id": "acme", "slot": "2026-01-05T09:00:00Z", "source_id": "rss"}
COMPLETION = RunCompletion(
    run_id=7,
    subscription_id="acme",
    slot=SLOT,
    reason="schedule",
    succeeded=True,
    completed_at=PUBLISHED,
    counts=OutcomeCounts(succeeded=1, failed=0, skipped=0, lost=0),
    items=4,
)


class FakeLedger:
    def __init__(self, answer: OutcomeRecorded | None) -> None:
        self.answer = answer
        self.reports: list[tuple[str, datetime, str, Report, int]] = []
        self.published: list[tuple[int, str]] = []
        self.released: list[int] = []

    def record_outcome(
        self,
        subscription_id: str,
        slot: datetime,
        source_id: str,
        report: Report,
        *,
        max_attempts_for: Callable[[str], int],
        lease: timedelta,
    ) -> OutcomeRecorded | None:
        self.reports.append((subscription_id, slot, source_id, report, max_attempts_for("rss")))
        return self.answer

    def mark_completion_published(self, run_id: int, message_id: str) -> bool:
        self.published.append((run_id, message_id))
        return True

    def release_completion_claim(self, run_id: int) -> None:
        self.released.append(run_id)


class FakePublisher:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.messages: list[OutboundMessage] = []

    def publish(self, messages: Sequence[OutboundMessage]) -> list[str]:
        if self.fail:
            raise DependencyUnavailableError("pubsub", "down")
        self.messages.extend(messages)
        return [f"m{i}" for i, _ in enumerate(messages)]


def recorded(**kw: Any) -> OutcomeRecorded:
    values: dict[str, Any] = {
        "dispatch_id": 1,
        "run_id": 7,
        "source_kind": "rss",
        "state": "succeeded",
        "final": True,
        "attempts": 1,
        "completion": None,
        "completion_pending": False,
    }
    return OutcomeRecorded(**{**values, **kw})


def run(
    payload: dict[str, Any], ledger: FakeLedger, publisher: FakePublisher | None = None
) -> OutcomeRecorded:
    deps = ResultsDependencies(
        settings=load_settings(environ={}),
        ledger=ledger,
        completions=publisher or FakePublisher(),
        clock=lambda: PUBLISHED,
    )
    message = PushMessage(data=b"", attributes={}, message_id="m", publish_time=PUBLISHED)
    return record_result(payload, message, deps=deps)


def test_a_minimal_result_is_recorded_with_defaults_from_the_message() -> None:
    ledger = FakeLedger(recorded())
    run({"dispatch_key": {**KEY, "slot": "2026-01-05T09:00:30Z"}, "outcome": "succeeded"}, ledger)
    [(subscription_id, slot, source_id, report, max_attempts)] = ledger.reports
    # A hand-typed slot inside the minute is that minute's slot, as fanout reads it.
    assert (subscription_id, slot, source_id) == ("acme", SLOT, "rss")
    assert (report.outcome, report.attempt, report.reported_at, report.final) == (
        "succeeded",
        1,
        PUBLISHED,
        False,
    )
    assert max_attempts == 5  # the rss queue's, from app.toml


def test_an_unknown_dispatch_key_is_a_permanent_error_naming_the_key() -> None:
    with pytest.raises(UnknownDispatchError) as caught:
        run({"dispatch_key": KEY, "outcome": "succeeded"}, FakeLedger(None))
    assert caught.value.details()["path"] == "$.dispatch_key"
    assert "acme/2026-01-05T09:00:00Z/rss" in caught.value.details()["value"]


def test_completing_a_run_publishes_its_event_then_records_it() -> None:
    ledger, publisher = FakeLedger(recorded(completion=COMPLETION)), FakePublisher()
    run({"dispatch_key": KEY, "outcome": "succeeded"}, ledger, publisher)
    [message] = publisher.messages
    body = json.loads(message.data)
    assert body["run_id"] == 7 and body["succeeded"] is True and body["items"] == 4
    assert body["counts"] == {"succeeded": 1, "failed": 0, "skipped": 0, "lost": 0}
    assert dict(message.attributes) == {
        "subscription_id": "acme",
        "run_id": "7",
        "succeeded": "true",
    }
    assert ledger.published == [(7, "m0")]

    from shared.contracts import validate

    validate("run-completed.v1.json", body)


def test_a_failed_event_publish_releases_the_claim_and_is_retryable() -> None:
    ledger = FakeLedger(recorded(completion=COMPLETION))
    with pytest.raises(DependencyUnavailableError):
        run({"dispatch_key": KEY, "outcome": "succeeded"}, ledger, FakePublisher(fail=True))
    assert ledger.released == [7] and ledger.published == []


def test_an_event_being_published_elsewhere_sends_the_result_back_for_later() -> None:
    ledger = FakeLedger(recorded(completion_pending=True))
    with pytest.raises(CompletionPendingError):
        run({"dispatch_key": KEY, "outcome": "succeeded"}, ledger)
