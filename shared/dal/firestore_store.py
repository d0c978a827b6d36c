"""The ``subscriptions`` collection in Firestore: the due query, conditional advances, one get.

Every call carries an explicit timeout and a short retry budget, so a Firestore outage (or a dead
emulator) fails the invocation quickly with a :class:`~shared.errors.RetryableError` instead of
hanging past the push subscription's ack deadline.

The due query is exactly the composite index Terraform declares for the collection::

    shard ==, status ==, paused ==, next_run_at <=   order by next_run_at

so it reads only due documents, never the collection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from shared.dal.records import StoredSubscription
from shared.errors import DependencyTimeoutError, DependencyUnavailableError

if TYPE_CHECKING:
    from google.cloud import firestore

__all__ = ["COLLECTION", "FirestoreSubscriptionStore"]

logger = logging.getLogger(__name__)

COLLECTION: Final = "subscriptions"
DEPENDENCY: Final = "firestore"
# Per attempt, and the whole retry budget: well inside fanout's 60 s ack deadline.
CALL_TIMEOUT_SECONDS: Final = 10.0
RETRY_BUDGET_SECONDS: Final = 20.0

_T = TypeVar("_T")

_TRANSIENT = gretry.if_exception_type(
    gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Aborted
)


def _retry(budget: float) -> gretry.Retry:
    return gretry.Retry(
        predicate=_TRANSIENT,
        initial=0.1,
        maximum=1.0,
        multiplier=2.0,
        timeout=budget,
    )


def _translate(action: str, call: Callable[[], _T]) -> _T:
    """Run ``call``; turn Google API failures into the dispatcher's retryable errors."""
    try:
        return call()
    except (gexc.DeadlineExceeded, gexc.RetryError) as exc:
        raise DependencyTimeoutError(DEPENDENCY, f"{action}: {exc}") from exc
    except gexc.GoogleAPIError as exc:
        raise DependencyUnavailableError(DEPENDENCY, f"{action}: {exc}") from exc


class FirestoreSubscriptionStore:
    """Reads and conditional writes on ``subscriptions``; the client is built on first use."""

    def __init__(
        self,
        client_factory: Callable[[], firestore.Client],
        *,
        collection: str = COLLECTION,
        timeout: float = CALL_TIMEOUT_SECONDS,
        retry_budget: float = RETRY_BUDGET_SECONDS,
    ) -> None:
        self._client_factory = client_factory
        self._client: firestore.Client | None = None
        self._collection = collection
        self._timeout = timeout
        self._retry_budget = retry_budget

    @property
    def client(self) -> firestore.Client:
        """The Firestore client (created on first use, never at import or construction)."""
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    # -- reads -----------------------------------------------------------------------------------

    def due_page(
        self,
        shard: int,
        tick_time: datetime,
        limit: int,
        after: StoredSubscription | None = None,
    ) -> list[StoredSubscription]:
        """One page of the shard's due documents (``next_run_at <= tick_time``), oldest first.

        ``after`` is the last document of the previous page: paging resumes after its
        (``next_run_at``, id) position, so documents advanced meanwhile simply drop out.
        """
        from google.cloud.firestore_v1.base_query import FieldFilter

        query: Any = (
            self.client.collection(self._collection)
            .where(filter=FieldFilter("shard", "==", shard))
            .where(filter=FieldFilter("status", "==", "active"))
            .where(filter=FieldFilter("paused", "==", False))
            .where(filter=FieldFilter("next_run_at", "<=", tick_time))
            .order_by("next_run_at")
            .limit(limit)
        )
        if after is not None and after.cursor is not None:
            query = query.start_after(after.cursor)

        def run() -> list[StoredSubscription]:
            return [self._record(snapshot) for snapshot in self._stream(query) if snapshot.exists]

        return _translate(f"due query (shard {shard})", run)

    def _stream(self, query: Any) -> Iterator[Any]:
        """Every snapshot the query returns (one per document read; tests count here)."""
        yield from query.stream(retry=_retry(self._retry_budget), timeout=self._timeout)

    def get(self, subscription_id: str) -> StoredSubscription | None:
        """The document, or ``None`` if it does not exist. One document read."""
        ref = self.client.collection(self._collection).document(subscription_id)
        snapshot = _translate(
            f"get {subscription_id}",
            lambda: ref.get(retry=_retry(self._retry_budget), timeout=self._timeout),
        )
        return self._record(snapshot) if snapshot.exists else None

    @staticmethod
    def _record(snapshot: Any) -> StoredSubscription:
        return StoredSubscription(
            id=str(snapshot.id),
            data=snapshot.to_dict() or {},
            update_time=snapshot.update_time,
            cursor=snapshot,
        )

    # -- conditional writes ----------------------------------------------------------------------

    def advance(
        self,
        doc: StoredSubscription,
        next_run_at: datetime | None,
        *,
        expired: bool,
        now: datetime,
    ) -> bool:
        """Store the new ``next_run_at`` (or mark expired) if nobody wrote the document since it
        was read. Returns False when the precondition failed (somebody else advanced it)."""
        fields: dict[str, Any] = {"next_run_at": next_run_at, "updated_at": now}
        if expired:
            fields = {"status": "expired", "next_run_at": None, "updated_at": now}
        ref = self.client.collection(self._collection).document(doc.id)
        option = (
            self.client.write_option(last_update_time=doc.update_time)
            if doc.update_time is not None
            else self.client.write_option(exists=True)
        )
        try:
            _translate(
                f"advance {doc.id}",
                lambda: ref.update(
                    fields, option=option, retry=_retry(self._retry_budget), timeout=self._timeout
                ),
            )
        except DependencyUnavailableError as exc:
            cause = exc.__cause__
            if isinstance(cause, gexc.FailedPrecondition | gexc.NotFound):
                return False
            raise
        return True

    def put_many(self, docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Write whole documents in batches of 500 (seeding and tests; not on the hot path)."""
        client = self.client
        for start in range(0, len(docs), 500):
            batch = client.batch()
            for doc_id, data in docs[start : start + 500]:
                batch.set(client.collection(self._collection).document(doc_id), data)
            _translate("batch write", functools.partial(batch.commit, timeout=self._timeout))
