"""The ledger as fanout and maintenance ``reconcile`` use it: the repository's calls with database
failures made retryable."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from shared.errors import DependencyTimeoutError, DependencyUnavailableError
from shared.ledger.repository import (
    Claim,
    DispatchRow,
    Ledger,
    LostDispatch,
    OutcomeRecorded,
    RunClaims,
    RunCompletion,
    RunRef,
    SourceSpec,
)
from shared.outcomes import Report

__all__ = ["LedgerGateway"]

_T = TypeVar("_T")


def _guard(action: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except PoolTimeout as exc:
        raise DependencyTimeoutError("postgresql", f"{action}: {exc}") from exc
    except psycopg.OperationalError as exc:
        raise DependencyUnavailableError("postgresql", f"{action}: {exc}") from exc
    except psycopg.errors.SerializationFailure as exc:
        raise DependencyUnavailableError("postgresql", f"{action}: {exc}") from exc


class LedgerGateway:
    """Delegates to :class:`~shared.ledger.repository.Ledger`; a down database is retryable.

    Other database errors (a constraint the code violates, a bad query) stay as they are: the
    entry-point wrapper logs them with a traceback and treats them as retryable too, but they
    point at a bug, not at an outage.
    """

    def __init__(self, ledger_factory: Callable[[], Ledger]) -> None:
        self._factory = ledger_factory

    def record_run(
        self, subscription_id: str, slot: datetime, reason: str, message_id: str | None = None
    ) -> RunRef:
        """See :meth:`Ledger.record_run`."""
        return _guard(
            "record_run",
            lambda: self._factory().record_run(subscription_id, slot, reason, message_id),
        )

    def start_run(
        self,
        subscription_id: str,
        slot: datetime,
        reason: str,
        sources: Sequence[SourceSpec],
        message_id: str | None = None,
    ) -> RunClaims:
        """See :meth:`Ledger.start_run`."""
        return _guard(
            "start_run",
            lambda: self._factory().start_run(subscription_id, slot, reason, sources, message_id),
        )

    def mark_dispatches(
        self, created: Sequence[int], failed: Sequence[tuple[int, str]] = ()
    ) -> tuple[int, int]:
        """See :meth:`Ledger.mark_dispatches`."""
        return _guard("mark_dispatches", lambda: self._factory().mark_dispatches(created, failed))

    def claim_dispatches(self, run: RunRef, sources: Sequence[SourceSpec]) -> list[Claim]:
        """See :meth:`Ledger.claim_dispatches`."""
        return _guard("claim_dispatches", lambda: self._factory().claim_dispatches(run, sources))

    def mark_created_many(self, dispatch_ids: Sequence[int]) -> int:
        """See :meth:`Ledger.mark_created_many`."""
        return _guard("mark_created", lambda: self._factory().mark_created_many(dispatch_ids))

    def mark_failed(self, dispatch_id: int, error: str) -> bool:
        """See :meth:`Ledger.mark_failed`."""
        return _guard("mark_failed", lambda: self._factory().mark_failed(dispatch_id, error))

    def mark_created(self, dispatch_id: int) -> bool:
        """See :meth:`Ledger.mark_created`."""
        return _guard("mark_created", lambda: self._factory().mark_created(dispatch_id))

    def stuck_dispatches(self, older_than: timedelta, limit: int) -> list[DispatchRow]:
        """See :meth:`Ledger.stuck_dispatches`."""
        return _guard(
            "stuck_dispatches", lambda: self._factory().stuck_dispatches(older_than, limit)
        )

    def run_reasons(self, run_ids: Sequence[int]) -> dict[int, str]:
        """See :meth:`Ledger.run_reasons`."""
        return _guard("run_reasons", lambda: self._factory().run_reasons(run_ids))

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
        """See :meth:`Ledger.record_outcome`."""
        return _guard(
            "record_outcome",
            lambda: self._factory().record_outcome(
                subscription_id,
                slot,
                source_id,
                report,
                max_attempts_for=max_attempts_for,
                lease=lease,
            ),
        )

    def mark_completion_published(self, run_id: int, message_id: str) -> bool:
        """See :meth:`Ledger.mark_completion_published`."""
        return _guard(
            "mark_completion_published",
            lambda: self._factory().mark_completion_published(run_id, message_id),
        )

    def release_completion_claim(self, run_id: int) -> None:
        """See :meth:`Ledger.release_completion_claim`."""
        _guard("release_completion_claim", lambda: self._factory().release_completion_claim(run_id))

    def complete_runs(self, run_ids: Sequence[int], *, lease: timedelta) -> list[RunCompletion]:
        """See :meth:`Ledger.complete_runs`."""
        return _guard("complete_runs", lambda: self._factory().complete_runs(run_ids, lease=lease))

    def unpublished_completions(self, older_than: timedelta, limit: int) -> list[int]:
        """See :meth:`Ledger.unpublished_completions`."""
        return _guard(
            "unpublished_completions",
            lambda: self._factory().unpublished_completions(older_than, limit),
        )

    def mark_lost(
        self, older_than: timedelta, limit: int, *, dry_run: bool = False
    ) -> list[LostDispatch]:
        """See :meth:`Ledger.mark_lost`."""
        return _guard(
            "mark_lost", lambda: self._factory().mark_lost(older_than, limit, dry_run=dry_run)
        )
