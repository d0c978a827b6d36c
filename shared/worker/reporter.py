"""Outcome reports: one ``result.v1.json`` message per decision, on ``dispatcher-results``.

The message is validated against its contract before it leaves (a drift is our bug, and the
results function would dead-letter it anyway) and the publish is waited for: the task's answer
depends on it. A publish that fails makes the kit answer 5xx, so Cloud Tasks retries the task
and the outcome is reported by a later attempt -- at the price of collecting again, which is why
collection must be idempotent on the dispatch key.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol

from shared.contracts import Contract, get_contract
from shared.dal.records import OutboundMessage
from shared.errors import DependencyUnavailableError, RetryableError, shorten
from shared.instants import format_instant

__all__ = [
    "RESULT_SCHEMA",
    "Outcome",
    "OutcomeReport",
    "PubSubResultPublisher",
    "ResultPublisher",
    "build_result",
    "error_text",
    "result_contract",
]

RESULT_SCHEMA: Final = "result.v1.json"
Outcome = Literal["started", "succeeded", "failed", "skipped"]
_MAX_ERROR_CHARS: Final = 2000
_MAX_DURATION_MS: Final = 86_400_000


class ResultPublisher(Protocol):
    """Publishes one message to the results topic and waits until Pub/Sub has it."""

    def publish(self, message: OutboundMessage) -> str:
        """Return the message id; raise :class:`~shared.errors.RetryableError` on failure."""
        ...


@dataclass(frozen=True)
class OutcomeReport:
    """One outcome of one attempt, before it becomes a message."""

    dispatch_key: Mapping[str, str]
    outcome: Outcome
    attempt: int
    task_name: str | None = None
    final: bool = False
    duration_ms: int | None = None
    items: int | None = None
    error: str | None = None
    reported_at: datetime | None = None


@functools.cache
def result_contract() -> Contract:
    """The compiled ``result.v1.json`` contract (cached)."""
    return get_contract(RESULT_SCHEMA)


def build_result(report: OutcomeReport) -> OutboundMessage:
    """The validated message for ``report``, with the attributes the results push filters on.

    Raises :class:`~shared.errors.SchemaValidationError` when the report breaks the contract
    (for instance a dispatch key that is not one).
    """
    payload: dict[str, Any] = {
        "dispatch_key": {
            "subscription_id": report.dispatch_key.get("subscription_id"),
            "slot": report.dispatch_key.get("slot"),
            "source_id": report.dispatch_key.get("source_id"),
        },
        "outcome": report.outcome,
        "attempt": report.attempt,
        "reported_at": format_instant(report.reported_at or datetime.now(UTC)),
    }
    if report.final:
        payload["final"] = True
    if report.task_name is not None:
        payload["task_name"] = report.task_name
    if report.duration_ms is not None:
        payload["duration_ms"] = min(max(report.duration_ms, 0), _MAX_DURATION_MS)
    if report.items is not None:
        payload["items"] = report.items
    if report.error:
        payload["error"] = report.error[:_MAX_ERROR_CHARS]
    result_contract().validate(payload)
    key = payload["dispatch_key"]
    return OutboundMessage(
        data=json.dumps(payload, separators=(",", ":"), sort_keys=True).encode(),
        attributes={
            "subscription_id": key["subscription_id"],
            "source_id": key["source_id"],
            "outcome": report.outcome,
        },
    )


class PubSubResultPublisher:
    """:class:`ResultPublisher` on a Pub/Sub publisher client built on first use."""

    def __init__(
        self, client_factory: Callable[[], Any], topic_path: str, *, timeout: float
    ) -> None:
        from shared.dal.pubsub_publisher import PubSubPublisher

        self._publisher = PubSubPublisher(client_factory, topic_path, timeout=timeout)

    @property
    def topic_path(self) -> str:
        """The topic published to."""
        return self._publisher.topic_path

    def publish(self, message: OutboundMessage) -> str:
        """Publish and wait; :class:`~shared.errors.RetryableError` if Pub/Sub did not take it."""
        try:
            return self._publisher.publish([message])[0]
        except RetryableError:
            raise
        except Exception as exc:
            # Building the client can fail too (no credentials, a bad emulator host): for the
            # task it is the same thing, the outcome did not leave, so the attempt must retry.
            raise DependencyUnavailableError("pubsub", error_text(exc)) from exc


def error_text(exc: BaseException) -> str:
    """A short human reason for a failure (its class and message), safe for the contract."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return shorten(text, _MAX_ERROR_CHARS)
