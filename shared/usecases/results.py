"""results: record what a collector reported about one task, and complete its run when done.

For a ``result.v1`` message (dispatch key, outcome, attempt, ...):

1. the report moves the dispatch's row forward in the ledger, idempotently and in any order
   (:mod:`shared.outcomes` says how; :meth:`shared.ledger.repository.Ledger.record_outcome` does
   it in one transaction). An unknown dispatch key is a permanent error: dead-lettered with the
   reason (a typo in a hand-typed result, or a run pruned since);
2. when every dispatch of the run is final, the run is completed in the same transaction and
   this call claims its ``run-completed`` event, publishes it, waits for Pub/Sub's answer, and
   records it as published. A failed publish releases the claim and fails the invocation
   (retryable): the redelivered result finds the run completed but unpublished and publishes
   again. A redelivery that finds another instance holding the claim fails too, so it comes back
   after the other published (or its lease ran out). Nothing is acked before the event is out.

What is guaranteed: a completed run's event is published at least once, and more than once only
if an instance dies between Pub/Sub's acceptance and the ledger's record of it (consumers
deduplicate on ``run_id``). Runs completed whose results were dead-lettered are published by
maintenance ``reconcile`` (the completion sweep).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from shared.config import Settings
from shared.dal import RUN_COMPLETED_TOPIC
from shared.dal.records import OutboundMessage
from shared.envelope import PushMessage, parse_rfc3339
from shared.errors import InvalidRequestError, PermanentError, RetryableError, preview
from shared.instants import format_instant, format_slot
from shared.ledger.repository import OutcomeRecorded, RunCompletion
from shared.outcomes import Outcome, Report
from shared.scheduling import floor_minute

__all__ = [
    "RUN_COMPLETED_TOPIC",
    "CompletionLedger",
    "CompletionPendingError",
    "CompletionPublisher",
    "ResultsDependencies",
    "ResultsLedger",
    "UnknownDispatchError",
    "completion_message",
    "publish_completions",
    "record_result",
]

logger = logging.getLogger(__name__)


class UnknownDispatchError(PermanentError):
    """No dispatch has the reported key: nothing to record it on."""

    def __init__(self, subscription_id: str, slot: datetime, source_id: str) -> None:
        super().__init__(
            f"no dispatch ({subscription_id}, {format_slot(slot)}, {source_id}) in the ledger"
        )
        self.key = f"{subscription_id}/{format_slot(slot)}/{source_id}"

    def details(self) -> dict[str, str]:
        return {"path": "$.dispatch_key", "rule": "known-dispatch", "value": preview(self.key)}


class CompletionPendingError(RetryableError):
    """The run is complete and another instance is publishing its event: come back later."""


class CompletionLedger(Protocol):
    """The ledger calls publishing a run-completed event makes."""

    def mark_completion_published(self, run_id: int, message_id: str) -> bool:
        """The event is out."""
        ...

    def release_completion_claim(self, run_id: int) -> None:
        """The publish failed: give the claim back."""
        ...


class ResultsLedger(CompletionLedger, Protocol):
    """The ledger calls the results path makes (real: :class:`~shared.dal.ledger_gateway`)."""

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
        """See :meth:`shared.ledger.repository.Ledger.record_outcome`."""
        ...


class CompletionPublisher(Protocol):
    """Publishes to ``dispatcher-run-completed`` and waits for every message id."""

    def publish(self, messages: Sequence[OutboundMessage]) -> list[str]:
        """Message ids in order; raises RetryableError if any publish failed."""
        ...


@dataclass(frozen=True)
class ResultsDependencies:
    """Everything the results path talks to (real: :func:`shared.wiring.results_dependencies`)."""

    settings: Settings
    ledger: ResultsLedger
    completions: CompletionPublisher
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


def record_result(
    payload: dict[str, Any],
    message: PushMessage,
    *,
    deps: ResultsDependencies,
) -> OutcomeRecorded:
    """Record one task outcome and publish its run's completion if this made the run complete.

    The function's real dependencies come from :mod:`shared.wiring`."""
    key = payload["dispatch_key"]
    subscription_id, source_id = str(key["subscription_id"]), str(key["source_id"])
    slot = floor_minute(_instant(str(key["slot"]), "$.dispatch_key.slot"))
    report = _report(payload, message, deps.clock())
    settings = deps.settings
    recorded = deps.ledger.record_outcome(
        subscription_id,
        slot,
        source_id,
        report,
        max_attempts_for=settings.max_attempts_for,
        lease=timedelta(seconds=settings.completion_lease_seconds),
    )
    if recorded is None:
        raise UnknownDispatchError(subscription_id, slot, source_id)
    published = None
    if recorded.completion is not None:
        published = publish_completions(deps.ledger, deps.completions, [recorded.completion])[0]
    logger.info(
        "subscription %s, slot %s, source %s: %s (attempt %d) -> %s%s",
        subscription_id,
        format_slot(slot),
        source_id,
        report.outcome,
        report.attempt,
        recorded.state,
        ", run completed" if recorded.completion is not None else "",
        extra={
            "subscription_id": subscription_id,
            "slot": format_slot(slot),
            "source_id": source_id,
            "source_kind": recorded.source_kind,
            "outcome": report.outcome,
            "attempt": report.attempt,
            "execution_state": recorded.state,
            "execution_final": recorded.final,
            "execution_attempts": recorded.attempts,
            "run_id": recorded.run_id,
            "run_completed": recorded.completion is not None,
            # What monitoring counts: a dispatch that ended failed (no attempt left, or the
            # collector said the failure is permanent) is "final-failure".
            "decision": (
                "final-failure" if recorded.state == "failed" and recorded.final else "recorded"
            ),
            **({"run_completed_message_id": published} if published else {}),
        },
    )
    if recorded.completion_pending:
        raise CompletionPendingError(
            f"run {recorded.run_id} is complete and its event is being published elsewhere"
        )
    return recorded


def publish_completions(
    ledger: CompletionLedger, publisher: CompletionPublisher, completions: Sequence[RunCompletion]
) -> list[str]:
    """Publish claimed run-completed events, then record each as published.

    On a failed publish every claim is released (the next result or sweep publishes at once)
    and the error is raised.
    """
    if not completions:
        return []
    try:
        ids = publisher.publish([completion_message(c) for c in completions])
    except RetryableError:
        for completion in completions:
            ledger.release_completion_claim(completion.run_id)
        raise
    for completion, message_id in zip(completions, ids, strict=True):
        ledger.mark_completion_published(completion.run_id, message_id)
        logger.info(
            "run %d of %s @ %s completed (%s); run-completed event %s published",
            completion.run_id,
            completion.subscription_id,
            format_slot(completion.slot),
            "succeeded" if completion.succeeded else "not fully succeeded",
            message_id,
            extra={
                "subscription_id": completion.subscription_id,
                "slot": format_slot(completion.slot),
                "run_id": completion.run_id,
                "decision": "run-completed",
                "run_succeeded": completion.succeeded,
                "counts": vars(completion.counts),
            },
        )
    return ids


def completion_message(completion: RunCompletion) -> OutboundMessage:
    """The ``run-completed.v1`` message of a run (attributes let consumers filter)."""
    body = {
        "run_id": completion.run_id,
        "subscription_id": completion.subscription_id,
        "slot": format_slot(completion.slot),
        "reason": completion.reason,
        "succeeded": completion.succeeded,
        "completed_at": format_instant(completion.completed_at),
        "counts": vars(completion.counts),
        "items": completion.items,
    }
    return OutboundMessage(
        data=json.dumps(body, separators=(",", ":"), sort_keys=True).encode(),
        attributes={
            "subscription_id": completion.subscription_id,
            "run_id": str(completion.run_id),
            "succeeded": "true" if completion.succeeded else "false",
        },
    )


def _report(payload: dict[str, Any], message: PushMessage, now: datetime) -> Report:
    outcome: Outcome = payload["outcome"]
    reported = payload.get("reported_at")
    reported_at = (
        _instant(str(reported), "$.reported_at")
        if reported is not None
        else (message.publish_time or now)
    )
    return Report(
        outcome=outcome,
        attempt=int(payload.get("attempt", 1)),
        reported_at=reported_at.astimezone(UTC),
        final=bool(payload.get("final", False)),
        duration_ms=payload.get("duration_ms"),
        items=payload.get("items"),
        error=payload.get("error"),
        task_name=payload.get("task_name"),
    )


def _instant(text: str, path: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError as exc:
        raise InvalidRequestError(f"{path} {text!r} is not RFC 3339: {exc}") from exc
