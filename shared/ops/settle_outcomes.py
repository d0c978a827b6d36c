"""Maintenance ``reconcile``, second half: tasks that never reported, and runs left unannounced.

Cloud Tasks forgets a task about an hour after it ran, so the ledger cannot ask it what became
of a task. What it can tell is time: a dispatch created longer ago than ``lost_after`` (longer
than its queue's whole retry span, checked when the settings load) with no final outcome will
never get one from Cloud Tasks. Such a dispatch is marked ``lost`` (final; a real final outcome
arriving later still replaces it), one WARNING line each with ``decision: lost``, and its run
is completed if that was its last open dispatch.

Then every run completed at least one publish lease ago whose ``run-completed`` event is not out
(its last result was dead-lettered after completing it, or an instance died before publishing)
is claimed and published here, so no completed run stays unannounced.

``dry_run`` counts the dispatches that would be marked lost and publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final, Protocol

from shared.instants import format_slot
from shared.usecases.results import CompletionPublisher, publish_completions

if TYPE_CHECKING:
    from shared.ledger.repository import LostDispatch, RunCompletion

__all__ = ["SettleLedger", "SettleResult", "settle_outcomes"]

logger = logging.getLogger(__name__)

LOST_LIMIT: Final = 1000
SWEEP_LIMIT: Final = 500


class SettleLedger(Protocol):
    """The ledger calls settling makes (real: :class:`shared.dal.ledger_gateway.LedgerGateway`)."""

    def mark_lost(
        self, older_than: timedelta, limit: int, *, dry_run: bool = False
    ) -> list[LostDispatch]: ...

    def complete_runs(self, run_ids: Sequence[int], *, lease: timedelta) -> list[RunCompletion]: ...

    def unpublished_completions(self, older_than: timedelta, limit: int) -> list[int]: ...

    def mark_completion_published(self, run_id: int, message_id: str) -> bool: ...

    def release_completion_claim(self, run_id: int) -> None: ...


@dataclass
class SettleResult:
    """Counts for the job's log line."""

    lost: int = 0
    runs_completed: int = 0
    completions_published: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def settle_outcomes(
    ledger: SettleLedger,
    publisher: CompletionPublisher,
    *,
    lost_after: timedelta,
    lease: timedelta,
    dry_run: bool = False,
) -> SettleResult:
    """Mark lost dispatches, complete their runs, publish every unannounced completion."""
    result = SettleResult()
    lost = ledger.mark_lost(lost_after, LOST_LIMIT, dry_run=dry_run)
    result.lost = len(lost)
    for dispatch in lost:
        logger.warning(
            "reconcile: %s (%s @ %s, source %s) created %s, no outcome since: %s",
            dispatch.task_name,
            dispatch.subscription_id,
            format_slot(dispatch.slot),
            dispatch.source_id,
            dispatch.created_at.isoformat(),
            "would be marked lost" if dry_run else "lost",
            extra={
                "subscription_id": dispatch.subscription_id,
                "slot": format_slot(dispatch.slot),
                "source_id": dispatch.source_id,
                "source_kind": dispatch.source_kind,
                "dispatch_id": dispatch.dispatch_id,
                "task_name": dispatch.task_name,
                "decision": "would-be-lost" if dry_run else "lost",
            },
        )
    if dry_run:
        return result
    completed = ledger.complete_runs(sorted({d.run_id for d in lost}), lease=lease)
    result.runs_completed = len(completed)
    unannounced = ledger.unpublished_completions(lease, SWEEP_LIMIT)
    swept = ledger.complete_runs(unannounced, lease=lease) if unannounced else []
    claimed = {c.run_id: c for c in [*completed, *swept]}
    result.completions_published = len(
        publish_completions(ledger, publisher, list(claimed.values()))
    )
    return result
