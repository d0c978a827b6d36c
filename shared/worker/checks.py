"""The checks a task passes before anything is collected: is it still wanted, is it done.

* :func:`subscription_skip_reason` re-reads the subscription when the task runs, because the
  world may have changed since fanout created the task (up to a minute of jitter, or hours of
  retries, earlier): deleted, source removed, or what fanout itself would not dispatch now
  (:func:`shared.usecases.fanout.skip_reason`: paused for scheduled runs, expired for manual
  ones, a slot at or after ``ends_at``). The same rule as fanout, so a manual run of a paused
  subscription is collected.
* :class:`LedgerSucceededCheck` asks the ledger whether the dispatch already succeeded. It is a
  read, not a claim: two concurrent executions of one task can both pass it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

from shared.dal.records import StoredSubscription
from shared.dispatch_key import DispatchKey
from shared.errors import DependencyUnavailableError
from shared.subscription import Subscription

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

__all__ = [
    "LedgerSucceededCheck",
    "SubscriptionReader",
    "SucceededCheck",
    "subscription_skip_reason",
]

_SUCCEEDED = "succeeded"


class SubscriptionReader(Protocol):
    """One subscription document read (the Firestore store implements it)."""

    def get(self, subscription_id: str) -> StoredSubscription | None:
        """The document, or ``None`` if it does not exist."""
        ...


class SucceededCheck(Protocol):
    """Whether a dispatch key already has the outcome ``succeeded`` recorded."""

    def already_succeeded(self, key: DispatchKey) -> bool:
        """True if the ledger says so; raise :class:`~shared.errors.RetryableError` if unknown."""
        ...


def subscription_skip_reason(
    doc: StoredSubscription | None, key: DispatchKey, reason: str
) -> str | None:
    """Why the task must not be collected now, or ``None`` to collect.

    Raises :class:`~shared.subscription.InvalidSubscription` for a malformed document.
    """
    from shared.usecases.fanout import skip_reason

    if doc is None:
        return "deleted"
    subscription = Subscription.from_document(doc.id, doc.data)
    if all(source.id != key.source_id for source in subscription.sources):
        return "source removed from subscription"
    return skip_reason(subscription, key.slot, reason)


class LedgerSucceededCheck:
    """:class:`SucceededCheck` with one indexed query on a small, lazily opened pool."""

    _QUERY = (
        "SELECT execution_state FROM dispatches "
        "WHERE subscription_id = %s AND slot = %s AND source_id = %s"
    )

    def __init__(self, database_url: str, *, timeout: float = 10.0, max_size: int = 2) -> None:
        self._url = database_url
        self._timeout = timeout
        self._max_size = max_size
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    def _connection_pool(self) -> ConnectionPool[Any]:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    from shared.ledger.repository import open_pool

                    pool = open_pool(
                        self._url, min_size=1, max_size=self._max_size, timeout=self._timeout
                    )
                    # Opening starts connecting in the background; the first query waits.
                    pool.open(wait=False)
                    self._pool = pool
        return self._pool

    def already_succeeded(self, key: DispatchKey) -> bool:
        """One read of the dispatch's ``execution_state``."""
        import psycopg
        from psycopg_pool import PoolTimeout

        try:
            with self._connection_pool().connection() as conn:
                row = conn.execute(
                    self._QUERY, (key.subscription_id, key.slot, key.source_id)
                ).fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            raise DependencyUnavailableError("postgresql", str(exc)) from exc
        return row is not None and row[0] == _SUCCEEDED

    def close(self) -> None:
        """Close the pool (tests, shutdown)."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
