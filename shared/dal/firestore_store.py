"""The ``subscriptions`` collection in Firestore, for every consumer.

select reads the due query and advances conditionally (a page's advances in one BatchWrite),
fanout reads one document, and the admin, maintenance and sync code create, replace, update,
delete and page. Each consumer depends on its
own narrow Protocol (:class:`shared.usecases.select_due.SubscriptionStore`,
:class:`shared.usecases.fanout.SubscriptionReader`, :class:`shared.ops.store.SubscriptionStore`);
this one class implements all of them.

Writes that depend on what was read are conditional on the document's update time (Firestore's
``last_update_time`` precondition), never blind read-then-write: a lost race is reported
(``advance`` / ``advance_many`` answer False, the admin writes raise
:class:`~shared.dal.records.StoreConflict`).

Every call carries an explicit timeout and a short retry budget, so a Firestore outage (or a dead
emulator) fails the invocation quickly with a :class:`~shared.errors.RetryableError` instead of
hanging past the push subscription's ack deadline.

The due query (:mod:`shared.dal.due_query`) is exactly the composite index Terraform declares for
the collection, so it reads only due documents, never the collection.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.rpc import code_pb2

from shared.dal.due_query import due_query
from shared.dal.records import Advance, AlreadyExists, StoreConflict, StoredSubscription
from shared.errors import DependencyTimeoutError, DependencyUnavailableError, RetryableError

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


_RETRY_INITIAL: Final = 0.1
_RETRY_MAXIMUM: Final = 1.0
_RETRY_MULTIPLIER: Final = 2.0

# BatchWrite takes at most 500 writes; a few chunks in flight at once.
BATCH_WRITE_LIMIT: Final = 500
_BATCH_WRITE_WORKERS: Final = 4

# Per-write codes of a BatchWrite: the precondition failed or the document is gone (conflict),
# or the write was not applied for a passing reason: the transient RPC errors above, and
# RESOURCE_EXHAUSTED, which a burst of writes on the indexed next_run_at can meet while
# Firestore splits the hot key range (Google's guidance: back off and retry).
_CONFLICT_CODES: Final = frozenset({code_pb2.FAILED_PRECONDITION, code_pb2.NOT_FOUND})
_TRANSIENT_CODES: Final = frozenset(
    {
        code_pb2.UNAVAILABLE,
        code_pb2.DEADLINE_EXCEEDED,
        code_pb2.INTERNAL,
        code_pb2.ABORTED,
        code_pb2.RESOURCE_EXHAUSTED,
    }
)


def _retry(budget: float) -> gretry.Retry:
    return gretry.Retry(
        predicate=_TRANSIENT,
        initial=_RETRY_INITIAL,
        maximum=_RETRY_MAXIMUM,
        multiplier=_RETRY_MULTIPLIER,
        timeout=budget,
    )


def _dependency_error(action: str, exc: gexc.GoogleAPIError) -> RetryableError:
    """The dispatcher's retryable error for a Google API failure (a timeout is its own kind)."""
    if isinstance(exc, gexc.DeadlineExceeded | gexc.RetryError):
        return DependencyTimeoutError(DEPENDENCY, f"{action}: {exc}")
    return DependencyUnavailableError(DEPENDENCY, f"{action}: {exc}")


def _translate(action: str, call: Callable[[], _T]) -> _T:
    """Run ``call``; turn Google API failures into the dispatcher's retryable errors."""
    try:
        return call()
    except gexc.GoogleAPIError as exc:
        raise _dependency_error(action, exc) from exc


# What a conditional write answers when the document changed or vanished since it was read.
# (Aborted, contention, is retried with the transient errors; the precondition still holds.)
_CONFLICTS: Final = (gexc.FailedPrecondition, gexc.NotFound)


def _raise_status(action: str, status: Any) -> NoReturn:
    """Raise one write's failed status as the dispatcher error the same RPC error would give."""
    error = gexc.from_grpc_status(status.code, status.message)  # type: ignore[no-untyped-call]
    raise _dependency_error(action, error) from error


def _conflict(exc: DependencyUnavailableError, kinds: tuple[type[Exception], ...]) -> bool:
    return isinstance(exc.__cause__, kinds)


class _AdvanceWrites:
    """The ``Write`` protobufs of an advance, built directly.

    What ``update()`` on a batch builds for the same fields, without its general machinery:
    profiling select (docs/profile-select.md) found the client's field-path parsing, value
    encoding and proto-plus wrapping at about a fifth of select's CPU for two or three fields
    whose names and types never change. The same RPC carries the same writes: the same update
    mask, the same precondition (the update time as read, to the nanosecond, else existence).
    """

    def __init__(self, collection_path: str, now: datetime) -> None:
        from google.cloud.firestore_v1.types import write

        self._write_class: Any = write.Write.pb()
        self._prefix = collection_path + "/"
        self._now = _timestamp_pb(now)

    def pb(self, item: Advance) -> Any:
        """The raw ``Write`` of one advance."""
        pb = self._write_class()
        pb.update.name = self._prefix + item.doc.id
        fields = pb.update.fields
        if item.expired:
            fields["status"].string_value = "expired"
            fields["next_run_at"].null_value = 0  # NULL_VALUE
            pb.update_mask.field_paths.extend(("status", "next_run_at", "updated_at"))
        else:
            if item.next_run_at is None:
                fields["next_run_at"].null_value = 0
            else:
                fields["next_run_at"].timestamp_value.CopyFrom(_timestamp_pb(item.next_run_at))
            pb.update_mask.field_paths.extend(("next_run_at", "updated_at"))
        fields["updated_at"].timestamp_value.CopyFrom(self._now)
        if item.doc.update_time is not None:
            pb.current_document.update_time.CopyFrom(_timestamp_pb(item.doc.update_time))
        else:
            # update() requires the document to exist; without a read time that is all it asks.
            pb.current_document.exists = True
        return pb


def _timestamp_pb(value: datetime) -> Any:
    """A protobuf Timestamp of ``value``, nanoseconds kept (a read update time has them: a
    precondition rounded to microseconds would never match)."""
    from google.protobuf import timestamp_pb2

    to_pb = getattr(value, "timestamp_pb", None)  # DatetimeWithNanoseconds, as Firestore reads
    if to_pb is not None:
        return to_pb()
    delta = value.astimezone(UTC) - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86_400 + delta.seconds, nanos=delta.microseconds * 1000
    )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class FirestoreAdapter:
    """One collection's adapter: its name, the call timeout and retry budget, and a client that
    is built on first use (never at import or construction)."""

    default_collection: str = COLLECTION

    def __init__(
        self,
        client_factory: Callable[[], firestore.Client],
        *,
        collection: str | None = None,
        timeout: float = CALL_TIMEOUT_SECONDS,
        retry_budget: float = RETRY_BUDGET_SECONDS,
    ) -> None:
        self._client_factory = client_factory
        self._client: firestore.Client | None = None
        self._collection = collection or self.default_collection
        self._timeout = timeout
        self._retry_budget = retry_budget

    @property
    def client(self) -> firestore.Client:
        """The Firestore client (created on first use)."""
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def _ref(self, doc_id: str) -> Any:
        return self.client.collection(self._collection).document(doc_id)

    def _conditional_update(
        self, doc_id: str, fields: dict[str, Any], if_updated_at: object, *, what: str
    ) -> None:
        """Set ``fields`` only if the document's update time is still ``if_updated_at`` (else
        :class:`StoreConflict`, naming it ``what``). Without a read time there is no
        precondition, but update() itself still requires the document to exist."""
        ref = self._ref(doc_id)
        option = (
            self.client.write_option(last_update_time=if_updated_at)
            if isinstance(if_updated_at, datetime)
            else None
        )
        try:
            _translate(
                f"update {what} {doc_id}",
                lambda: ref.update(
                    fields, option=option, retry=_retry(self._retry_budget), timeout=self._timeout
                ),
            )
        except DependencyUnavailableError as exc:
            if _conflict(exc, _CONFLICTS):
                raise StoreConflict(f"{what} {doc_id!r} changed meanwhile") from exc
            raise


class FirestoreSubscriptionStore(FirestoreAdapter):
    """Reads and conditional writes on ``subscriptions``."""

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
            return [
                self._due_record(snapshot) for snapshot in self._stream(query) if snapshot.exists
            ]

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

    @staticmethod
    def _due_record(snapshot: Any) -> StoredSubscription:
        """:meth:`_record` without ``to_dict()``'s deep copy of the document.

        The snapshot already holds its own deep copy of the decoded fields (made when it was
        built) and nothing else refers to it; a second copy per due document was about 6 % of
        select's CPU (docs/profile-select.md). ``data`` is a read-only Mapping for select, which
        never writes to it: the snapshot stays intact as the paging cursor.
        """
        return StoredSubscription(
            id=str(snapshot.id),
            data=snapshot._data or {},
            update_time=snapshot.update_time,
            cursor=snapshot,
        )

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
        return self.advance_many([Advance(doc, next_run_at, expired)], now=now)[0]

    def advance_many(self, items: Sequence[Advance], *, now: datetime) -> list[bool]:
        """:meth:`advance` for many documents in few RPCs; one outcome per item, in order.

        Each write keeps its own ``update_time`` precondition and its own outcome: Firestore's
        BatchWrite is not atomic, so a conflicting document (False) does not hold up the
        others. Chunks of :data:`BATCH_WRITE_LIMIT` writes go out concurrently. Writes answered
        with a transient code (contention, unavailable) are sent again within the retry budget;
        any other failure raises a :class:`~shared.errors.RetryableError` once every chunk has
        finished -- the writes that succeeded stay applied, which is safe: each stored a value
        planned from the value it replaced.
        """
        if not items:
            return []
        ids = [item.doc.id for item in items]
        if len(set(ids)) != len(ids):
            # BatchWrite applies writes in no particular order; two to one document are a bug.
            raise ValueError("advance_many got the same document more than once")
        chunks = [
            items[start : start + BATCH_WRITE_LIMIT]
            for start in range(0, len(items), BATCH_WRITE_LIMIT)
        ]
        if len(chunks) == 1:
            return self._advance_chunk(chunks[0], now)
        with ThreadPoolExecutor(
            min(len(chunks), _BATCH_WRITE_WORKERS), "firestore-advance"
        ) as pool:
            futures = [pool.submit(self._advance_chunk, chunk, now) for chunk in chunks]
        # Leaving the pool waited for every chunk: no write is in flight when this raises.
        return [outcome for future in futures for outcome in future.result()]

    def _advance_chunk(self, chunk: Sequence[Advance], now: datetime) -> list[bool]:
        client = self.client
        writes = _AdvanceWrites(f"{client._database_string}/documents/{self._collection}", now)
        outcomes: list[bool | None] = [None] * len(chunk)
        pending = list(range(len(chunk)))
        deadline = time.monotonic() + self._retry_budget
        delay = _RETRY_INITIAL
        while True:
            request = {
                "database": client._database_string,
                "writes": [writes.pb(chunk[index]) for index in pending],
                "labels": None,
            }
            budget = max(deadline - time.monotonic(), _RETRY_INITIAL)
            response = _translate(
                f"advance {len(pending)} documents (first {chunk[pending[0]].doc.id})",
                functools.partial(
                    client._firestore_api.batch_write,
                    request=request,
                    metadata=client._rpc_metadata,
                    retry=_retry(budget),
                    timeout=self._timeout,
                ),
            )
            statuses = list(response.status)
            if len(statuses) != len(pending):
                raise DependencyUnavailableError(
                    DEPENDENCY,
                    f"advance: {len(statuses)} statuses for {len(pending)} writes",
                )
            again: list[tuple[int, Any]] = []
            for index, status in zip(pending, statuses, strict=True):
                if status.code == code_pb2.OK:
                    outcomes[index] = True
                elif status.code in _CONFLICT_CODES:
                    outcomes[index] = False
                elif status.code in _TRANSIENT_CODES:
                    again.append((index, status))
                else:
                    _raise_status(f"advance {chunk[index].doc.id}", status)
            if not again:
                return [bool(outcome) for outcome in outcomes]
            if time.monotonic() + delay > deadline:
                index, status = again[0]
                _raise_status(f"advance {chunk[index].doc.id} (retry budget spent)", status)
            # The same preconditions go out again: a write that did apply meanwhile now fails
            # its precondition and reads as a conflict, never as a second advance.
            time.sleep(delay)
            delay = min(delay * _RETRY_MULTIPLIER, _RETRY_MAXIMUM)
            pending = [index for index, _ in again]

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
        self._conditional_update(subscription_id, fields, if_updated_at, what="subscription")

    def update(
        self, subscription_id: str, fields: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        """Set some fields, only if unchanged since ``if_updated_at`` (else :class:`StoreConflict`).

        ``if_updated_at=None`` still requires the document to exist.
        """
        self._conditional_update(subscription_id, dict(fields), if_updated_at, what="subscription")

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
