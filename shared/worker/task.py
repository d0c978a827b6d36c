"""What a collector's function receives and returns, and the errors it may raise.

The kit hands the collect function a :class:`CollectorTask` (the validated
``collector-task.v1.json`` body plus the Cloud Tasks headers) and expects a
:class:`CollectResult`. Raising says how the attempt ended:

* :class:`PermanentCollectError` (or any :class:`~shared.errors.PermanentError`): retrying
  cannot help (the source is gone, its credentials were revoked). Outcome ``failed`` with
  ``final: true`` and HTTP 200, so Cloud Tasks does not retry.
* :class:`RetryableCollectError`: retry later, answered with its ``status`` (429 or 503 make
  Cloud Tasks slow the queue down as well).
* anything else: outcome ``failed`` (not final), HTTP 503, Cloud Tasks retries with backoff.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from shared.dispatch_key import DispatchKey
from shared.envelope import parse_rfc3339
from shared.errors import PermanentError, RetryableError
from shared.worker.headers import TaskHeaders

__all__ = [
    "SCHEDULED_REASONS",
    "CollectResult",
    "CollectorTask",
    "PermanentCollectError",
    "RetryableCollectError",
    "TaskSource",
    "parse_task",
]

#: Reasons that come from the schedule (as opposed to an operator asking for a run).
SCHEDULED_REASONS: Final = frozenset({"schedule", "catch-up"})


class PermanentCollectError(PermanentError):
    """The collection cannot succeed on retry: report ``failed`` (final) and answer 200."""


class RetryableCollectError(RetryableError):
    """The collection may succeed later: report ``failed`` and answer ``status`` (a 4xx/5xx)."""

    def __init__(self, message: str, *, status: int = 503) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"status {status} would not make Cloud Tasks retry")
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TaskSource:
    """The source to collect: its id, kind and kind-specific parameters (passed through)."""

    id: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class CollectorTask:
    """One task to execute: the dispatch key, what to collect, and how Cloud Tasks sent it."""

    key: DispatchKey
    source: TaskSource
    subscription_id: str
    subscription_name: str
    reason: str
    task_name: str
    dispatched_at: datetime
    headers: TaskHeaders
    run_id: int | str | None = None

    @property
    def slot(self) -> datetime:
        """The slot collected for (UTC)."""
        return self.key.slot

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1."""
        return self.headers.attempt

    @property
    def scheduled(self) -> bool:
        """True for ``schedule`` / ``catch-up`` runs, False for ``manual`` / ``replay``."""
        return self.reason in SCHEDULED_REASONS


@dataclass(frozen=True)
class CollectResult:
    """What a successful collection found."""

    items: int = 0

    def __post_init__(self) -> None:
        if self.items < 0:
            raise ValueError(f"items must be >= 0, got {self.items}")


def parse_task(body: Mapping[str, Any], headers: TaskHeaders) -> CollectorTask:
    """Build the typed task from a body that already satisfies ``collector-task.v1.json``."""
    key = body["dispatch_key"]
    source = body["source"]
    return CollectorTask(
        key=DispatchKey(key["subscription_id"], parse_rfc3339(key["slot"]), key["source_id"]),
        source=TaskSource(source["id"], source["kind"], dict(source["params"])),
        subscription_id=body["subscription"]["id"],
        subscription_name=body["subscription"]["name"],
        reason=body["reason"],
        task_name=body["task_name"],
        dispatched_at=parse_rfc3339(body["dispatched_at"]),
        headers=headers,
        run_id=body.get("run_id"),
    )
