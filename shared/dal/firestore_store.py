"""The ``subscriptions`` collection in Firestore, for every consumer.

select reads the due query and advances conditionally, fanout reads one document, and the admin,
maintenance and sync code create, replace, update, delete and page. Each consumer depends on its
own narrow Protocol (:class:`shared.usecases.select_due.SubscriptionStore`,
:class:`shared.usecases.fanout.SubscriptionReader`, :class:`shared.ops.store.SubscriptionStore`);
this one class implements all of them.

Writes that depend on what was read are conditional on the document's update time (Firestore's
``last_update_time`` precondition), never blind read-then-write: a lost race is reported
(``advance`` returns False, the admin writes raise :class:`~shared.dal.records.StoreConflict`).

Every call carries an explicit timeout and a short retry budget, so a Firestore outage (or a dead
emulator) fails the invocation quickly with a :class:`~shared.errors.RetryableError` instead of
hanging past the push subscription's ack deadline.

The due query (:mod:`shared.dal.due_query`) is exactly the composite index Terraform declares for
the collection, so it reads only due documents, never the collection.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from shared.dal.due_query import due_query
from shared.dal.records import AlreadyExists, StoreConflict, StoredSubscription
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


# What a conditional write answers when the document changed or vanished since it was read.
# (Aborted, contention, is retried with the transient errors; the precondition still holds.)
_CONFLICTS: Final = (gexc.FailedPrecondition, gexc.NotFound)


def _conflict(exc: DependencyUnavailableError, kinds: tuple[type[Exception], ...]) -> bool:
    return isinstance(exc.__cause__, kinds)


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
        query: Any = due_query(self.client.collection(self._collection), shard, tick_time, limit)
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
        ref = self._ref(subscription_id)
        snapshot = _translate(
            f"get {subscription_id}",
            lambda: ref.get(retry=_retry(self._retry_budget), timeout=self._timeout),
        )
        return self._record(snapshot) if snapshot.exists else None

    def page(self, page_size: int, after: str | None = None) -> list[StoredSubscription]:
        """Up to ``page_size`` documents in id order, starting after id ``after``."""
        from google.cloud.firestore_v1.field_path import FieldPath

        query: Any = (
            self.client.collection(self._collection)
            .order_by(FieldPath.document_id())
            .limit(page_size)
        )
        if after is not None:
            query = query.start_after({FieldPath.document_id(): self._ref(after)})
        return _translate(
            f"page after {after!r}", lambda: [self._record(s) for s in self._stream(query)]
        )

    def active_ending_by(self, instant: datetime, limit: int) -> list[StoredSubscription]:
        """Up to ``limit`` documents with ``status == "active"`` and ``ends_at <= instant``."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query: Any = (
            self.client.collection(self._collection)
            .where(filter=FieldFilter("status", "==", "active"))
            .where(filter=FieldFilter("ends_at", "<=", instant))
            .limit(limit)
        )
        return _translate(
            "active ending query", lambda: [self._record(s) for s in self._stream(query)]
        )

    def _ref(self, subscription_id: str) -> Any:
        return self.client.collection(self._collection).document(subscription_id)

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
        ref = self._ref(doc.id)
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
            if _conflict(exc, _CONFLICTS):
                return False
            raise
        return True

    def create(self, subscription_id: str, data: Mapping[str, Any]) -> None:
        """Create the document; :class:`AlreadyExists` if it is there."""
        ref = self._ref(subscription_id)
        try:
            _translate(
                f"create {subscription_id}",
                lambda: ref.create(
                    dict(data), retry=_retry(self._retry_budget), timeout=self._timeout
                ),
            )
        except DependencyUnavailableError as exc:
            if _conflict(exc, (gexc.Conflict,)):  # AlreadyExists is a Conflict
                raise AlreadyExists(f"subscription {subscription_id!r} already exists") from exc
            raise

    def replace(
        self, subscription_id: str, data: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        """Overwrite the document, only if unchanged since ``if_updated_at`` (its update time);
        ``None`` means it must not exist yet (a create)."""
        if if_updated_at is None:
            self.create(subscription_id, data)
            return
        from google.cloud import firestore

        # set() takes no precondition: an update() of every top-level field under the
        # precondition is the conditional overwrite, plus deleting the fields the new document
        # no longer has. Should the document change between this read and the update, the
        # precondition rejects the update.
        current = self.get(subscription_id)
        fields: dict[str, Any] = dict(data)
        if current is not None:
            for key in current.data:
                if key not in fields:
                    fields[key] = firestore.DELETE_FIELD
        self._conditional_update(subscription_id, fields, if_updated_at)

    def update(
        self, subscription_id: str, fields: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        """Set some fields, only if unchanged since ``if_updated_at`` (else :class:`StoreConflict`).

        ``if_updated_at=None`` still requires the document to exist.
        """
        self._conditional_update(subscription_id, dict(fields), if_updated_at)

    def _conditional_update(
        self, subscription_id: str, fields: dict[str, Any], if_updated_at: datetime | None
    ) -> None:
        ref = self._ref(subscription_id)
        # No option: update() itself requires the document to exist.
        option = (
            self.client.write_option(last_update_time=if_updated_at)
            if if_updated_at is not None
            else None
        )
        try:
            _translate(
                f"update {subscription_id}",
                lambda: ref.update(
                    fields, option=option, retry=_retry(self._retry_budget), timeout=self._timeout
                ),
            )
        except DependencyUnavailableError as exc:
            if _conflict(exc, _CONFLICTS):
                raise StoreConflict(f"subscription {subscription_id!r} changed meanwhile") from exc
            raise

    def delete(self, subscription_id: str) -> bool:
        """Delete the document; False when there was none (one write, no read)."""
        ref = self._ref(subscription_id)
        option = self.client.write_option(exists=True)
        try:
            _translate(
                f"delete {subscription_id}",
                lambda: ref.delete(
                    option=option, retry=_retry(self._retry_budget), timeout=self._timeout
                ),
            )
        except DependencyUnavailableError as exc:
            if _conflict(exc, (gexc.NotFound,)):
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
