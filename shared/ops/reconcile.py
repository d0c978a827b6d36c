"""Maintenance ``reconcile``: re-create the Cloud Tasks of dispatches stuck in claimed or failed.

A dispatch stays ``claimed`` when fanout crashed between claiming the key and creating the task,
and ``failed`` when the create failed and the due message was never redelivered (dead-lettered,
or expired). Each such row keeps the full task name and queue; reconcile creates the task again
under exactly that name and queue, with the body, headers, OIDC identity and schedule time
fanout builds (:func:`shared.usecases.fanout.build_task_request`), then:

* created → ``mark_created``, counted ``recreated``;
* ALREADY_EXISTS → the earlier attempt landed: ``mark_created``, counted ``already_existed``;
* the create failed → ``mark_failed`` (attempts + 1, the error kept), counted ``failed``;
* **skipped**, the row left as it is (visible in ``dispatcher ledger dispatches``, removed with its
  run by ``prune-ledger``), when there is nothing right to send any more: the subscription
  document is gone or malformed, the source was removed from it, the source kind has no
  collector configured, the run itself was pruned meanwhile, or fanout would not dispatch that
  slot now (:func:`shared.usecases.fanout.skip_reason`: slot at or after ``ends_at``, a paused
  subscription's scheduled run, an expired subscription's manual run). Every skip is logged
  with its reason. A skipped row is skipped again next time: nothing changes, so the job stays
  idempotent.
* ``deferred``: after :data:`MAX_CONSECUTIVE_FAILURES` failed creates in a row Cloud Tasks is
  taken to be down; the remaining rows are left for the next run instead of each waiting for its
  own timeout.

Reads: one ledger query for the stuck rows, one for their runs' reasons, and **one Firestore
read per subscription** (not per dispatch). ``dry_run`` reads the same but creates and marks
nothing; ``recreated`` then counts the tasks it would create. Idempotent: once a row is
``created`` it is no longer stuck, so a second run finds nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import groupby
from typing import TYPE_CHECKING, Final, Protocol

from shared.config import ConfigError
from shared.dal.records import TaskRequest
from shared.errors import RetryableError, SchemaValidationError, TaskRejectedError
from shared.subscription import InvalidSubscription, Subscription
from shared.usecases.fanout import (
    SubscriptionReader,
    TaskGateway,
    build_task_request,
    skip_reason,
)

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ledger.repository import DispatchRow
    from shared.ops.jobs import JobContext

__all__ = [
    "MAX_CONSECUTIVE_FAILURES",
    "ReconcileLedger",
    "ReconcileResult",
    "reconcile",
    "reconcile_stuck",
]

logger = logging.getLogger(__name__)

# At most this many stuck rows per run (oldest first); the next run takes the rest.
RECONCILE_LIMIT: Final = 500
MAX_CONSECUTIVE_FAILURES: Final = 3


class ReconcileLedger(Protocol):
    """The ledger calls reconcile makes (real: :class:`shared.dal.ledger_gateway.LedgerGateway`)."""

    def stuck_dispatches(self, older_than: timedelta, limit: int) -> list[DispatchRow]:
        """Dispatches claimed or failed for longer than ``older_than``, oldest first."""
        ...

    def run_reasons(self, run_ids: Sequence[int]) -> dict[int, str]:
        """Each run's reason (absent when the run is gone)."""
        ...

    def mark_created(self, dispatch_id: int) -> bool:
        """The task exists."""
        ...

    def mark_failed(self, dispatch_id: int, error: str) -> bool:
        """A create failed (attempts + 1)."""
        ...


@dataclass
class ReconcileResult:
    """The counts of one reconcile run (the job's log line)."""

    stuck: int = 0
    recreated: int = 0
    already_existed: int = 0
    failed: int = 0
    skipped: int = 0
    deferred: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain counts for the job's structured log line."""
        return dict(vars(self))


def reconcile_stuck(
    ctx: JobContext, older_than: timedelta, lost_after: timedelta | None = None
) -> None:
    """The maintenance job: :func:`reconcile` on the real ledger, Firestore and Cloud Tasks,
    then :func:`~shared.ops.settle_outcomes.settle_outcomes` (``lost_after``: the settings' if
    not given)."""
    from shared.dal import completion_publisher
    from shared.dal.ledger_gateway import LedgerGateway
    from shared.ops.settle_outcomes import settle_outcomes

    ledger = LedgerGateway(ctx.ledger_factory)
    result = reconcile(
        ledger,
        ctx.store_factory(),
        ctx.tasks_factory(),
        settings=ctx.settings,
        now=ctx.now,
        older_than=older_than,
        dry_run=ctx.dry_run,
    )
    ctx.counts.update(result.as_dict())
    settled = settle_outcomes(
        ledger,
        completion_publisher(ctx.settings),
        lost_after=lost_after or timedelta(seconds=ctx.settings.lost_after_seconds),
        lease=timedelta(seconds=ctx.settings.completion_lease_seconds),
        dry_run=ctx.dry_run,
    )
    ctx.counts.update(settled.as_dict())


def reconcile(
    ledger: ReconcileLedger,
    store: SubscriptionReader,
    tasks: TaskGateway,
    *,
    settings: Settings,
    now: datetime,
    older_than: timedelta,
    dry_run: bool = False,
    limit: int = RECONCILE_LIMIT,
) -> ReconcileResult:
    """Re-create the task of every dispatch stuck for longer than ``older_than`` (module doc).

    Raises :class:`~shared.errors.RetryableError` only when the ledger or Firestore is down; a
    failed task create is counted and marked, not raised.
    """
    stuck = ledger.stuck_dispatches(older_than, limit)
    result = ReconcileResult(stuck=len(stuck))
    if not stuck:
        return result
    reasons = ledger.run_reasons(sorted({row.run_id for row in stuck}))
    consecutive_failures = 0
    by_subscription = sorted(stuck, key=lambda r: (r.subscription_id, r.slot, r.source_id))
    for subscription_id, group in groupby(by_subscription, key=lambda r: r.subscription_id):
        rows = list(group)
        if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
            result.deferred += len(rows)
            continue
        subscription, why = _subscription(store, subscription_id)
        for row in rows:
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                result.deferred += 1
                continue
            request, why_not = _request(
                settings, row, subscription=subscription, why=why, reasons=reasons, now=now
            )
            if request is None:
                _skip(row, why_not or "unknown", result)
                continue
            if dry_run:
                result.recreated += 1
                continue
            try:
                outcome = tasks.create(request)
            # A refusal (the queue gone, a grant missing) is recorded like any failure: the row
            # stays failed with the reason, and the job goes on with the other rows.
            except (RetryableError, TaskRejectedError) as exc:
                consecutive_failures += 1
                ledger.mark_failed(row.id, exc.message)
                result.failed += 1
                logger.warning(
                    "reconcile: re-creating %s failed: %s",
                    row.task_name,
                    exc.message,
                    extra=_row_fields(row, "failed"),
                )
                continue
            consecutive_failures = 0
            ledger.mark_created(row.id)
            # The gateway answers an enum (CreateOutcome) or, in fakes, its value.
            if str(getattr(outcome, "value", outcome)) == "already-exists":
                result.already_existed += 1
            else:
                result.recreated += 1
    return result


def _subscription(
    store: SubscriptionReader, subscription_id: str
) -> tuple[Subscription | None, str | None]:
    """The parsed subscription (one read for all its stuck rows), or why there is none."""
    doc = store.get(subscription_id)
    if doc is None:
        return None, "subscription gone"
    try:
        return Subscription.from_document(doc.id, doc.data), None
    except InvalidSubscription as exc:
        return None, f"subscription malformed: {exc}"


def _request(
    settings: Settings,
    row: DispatchRow,
    *,
    subscription: Subscription | None,
    why: str | None,
    reasons: dict[int, str],
    now: datetime,
) -> tuple[TaskRequest | None, str | None]:
    """The task request of ``row``, or ``None`` and why it is skipped."""
    if subscription is None:
        return None, why
    reason = reasons.get(row.run_id)
    if reason is None:
        return None, "run gone"
    source = next((s for s in subscription.sources if s.id == row.source_id), None)
    if source is None:
        return None, "source removed"
    skip = skip_reason(subscription, row.slot, reason)
    if skip is not None:
        return None, skip
    try:
        request = build_task_request(
            settings,
            subscription,
            source=source,
            slot=row.slot,
            task_name=row.task_name,
            queue=row.queue,
            reason=reason,
            run_id=row.run_id,
            now=now,
        )
    except ConfigError as exc:
        return None, f"no collector for kind {source.kind!r}: {exc}"
    except SchemaValidationError as exc:
        return None, f"collector contract: {exc.message}"
    return request, None


def _skip(row: DispatchRow, why: str, result: ReconcileResult) -> None:
    result.skipped += 1
    logger.warning(
        "reconcile: %s not re-created: %s",
        row.task_name,
        why,
        extra={**_row_fields(row, "skipped"), "skip_reason": why},
    )


def _row_fields(row: DispatchRow, decision: str) -> dict[str, object]:
    return {
        "subscription_id": row.subscription_id,
        "dispatch_id": row.id,
        "source_id": row.source_id,
        "slot": row.slot.isoformat(),
        "task_name": row.task_name,
        "decision": decision,
    }
