"""The Firestore ``subscriptions`` collection, as the admin and maintenance code needs it.

A small interface (:class:`SubscriptionStore`) with one Firestore implementation, so that the
maintenance and sync use cases never import a Google client and unit tests can use
:class:`MemorySubscriptionStore`. Writes that depend on what was read are conditional on the
document's update time (Firestore's optimistic precondition), never blind read-then-write.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

COLLECTION = "subscriptions"


class StoreConflict(RuntimeError):  # noqa: N818 - a state, like the Firestore error it wraps
    """The document changed (or appeared, or vanished) since it was read: read again, retry."""


class AlreadyExists(RuntimeError):  # noqa: N818 - mirrors google.api_core's name
    """``create`` found a document with that id."""


@dataclass(frozen=True)
class StoredDocument:
    """One subscription document as stored: its id, its data, and Firestore's update time."""

    id: str
    data: Mapping[str, Any]
    update_time: datetime | None = None


class SubscriptionStore(Protocol):
    """What admin, maintenance and sync do with the ``subscriptions`` collection."""

    def get(self, subscription_id: str) -> StoredDocument | None:
        """The document, or ``None`` when it does not exist."""
        ...

    def create(self, subscription_id: str, data: Mapping[str, Any]) -> None:
        """Create the document; :class:`AlreadyExists` if it is there."""
        ...

    def replace(
        self, subscription_id: str, data: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        """Overwrite the document, only if unchanged since ``if_updated_at`` (its update time)."""
        ...

    def update(
        self, subscription_id: str, fields: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        """Set some fields, only if unchanged since ``if_updated_at`` (else :class:`StoreConflict`).

        ``if_updated_at=None`` still requires the document to exist.
        """
        ...

    def delete(self, subscription_id: str) -> bool:
        """Delete the document; False when there was none."""
        ...

    def page(self, page_size: int, after: str | None = None) -> list[StoredDocument]:
        """Up to ``page_size`` documents in id order, starting after id ``after``."""
        ...

    def active_ending_by(self, instant: datetime, limit: int) -> list[StoredDocument]:
        """Up to ``limit`` documents with ``status == "active"`` and ``ends_at <= instant``."""
        ...


def iter_all(store: SubscriptionStore, page_size: int) -> Iterator[list[StoredDocument]]:
    """Every document of the collection, one page at a time (never the whole list in memory)."""
    after: str | None = None
    while True:
        page = store.page(page_size, after)
        if page:
            yield page
        if len(page) < page_size:
            return
        after = page[-1].id


class FirestoreSubscriptionStore:
    """:class:`SubscriptionStore` on a ``google.cloud.firestore.Client``."""

    def __init__(self, client: Any, collection: str = COLLECTION) -> None:
        self._client = client
        self._collection = collection

    def _ref(self, subscription_id: str) -> Any:
        return self._client.collection(self._collection).document(subscription_id)

    def _option(self, if_updated_at: datetime | None) -> Any:
        if if_updated_at is None:
            return None  # update() already requires the document to exist
        return self._client.write_option(last_update_time=if_updated_at)

    @staticmethod
    def _stored(snapshot: Any) -> StoredDocument:
        return StoredDocument(
            id=str(snapshot.id), data=snapshot.to_dict() or {}, update_time=snapshot.update_time
        )

    def get(self, subscription_id: str) -> StoredDocument | None:
        snapshot = self._ref(subscription_id).get()
        return self._stored(snapshot) if snapshot.exists else None

    def create(self, subscription_id: str, data: Mapping[str, Any]) -> None:
        from google.api_core import exceptions as gexc

        try:
            self._ref(subscription_id).create(dict(data))
        except gexc.Conflict as exc:  # AlreadyExists is a Conflict
            raise AlreadyExists(f"subscription {subscription_id!r} already exists") from exc

    def replace(
        self, subscription_id: str, data: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        from google.api_core import exceptions as gexc

        if if_updated_at is None:
            self.create(subscription_id, data)
            return
        # set() takes no precondition; an update() of every top-level field with the precondition
        # is the conditional overwrite, plus deleting the fields the new document no longer has.
        from google.cloud import firestore

        current = self.get(subscription_id)
        fields: dict[str, Any] = dict(data)
        if current is not None:
            for key in current.data:
                if key not in fields:
                    fields[key] = firestore.DELETE_FIELD
        try:
            self._ref(subscription_id).update(fields, option=self._option(if_updated_at))
        except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted) as exc:
            raise StoreConflict(f"subscription {subscription_id!r} changed meanwhile") from exc

    def update(
        self, subscription_id: str, fields: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        from google.api_core import exceptions as gexc

        try:
            self._ref(subscription_id).update(dict(fields), option=self._option(if_updated_at))
        except (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted) as exc:
            raise StoreConflict(f"subscription {subscription_id!r} changed meanwhile") from exc

    def delete(self, subscription_id: str) -> bool:
        ref = self._ref(subscription_id)
        if not ref.get().exists:
            return False
        ref.delete()
        return True

    def page(self, page_size: int, after: str | None = None) -> list[StoredDocument]:
        from google.cloud.firestore_v1.field_path import FieldPath

        query = (
            self._client.collection(self._collection)
            .order_by(FieldPath.document_id())
            .limit(page_size)
        )
        if after is not None:
            query = query.start_after({FieldPath.document_id(): self._ref(after)})
        return [self._stored(s) for s in query.stream()]

    def active_ending_by(self, instant: datetime, limit: int) -> list[StoredDocument]:
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = (
            self._client.collection(self._collection)
            .where(filter=FieldFilter("status", "==", "active"))
            .where(filter=FieldFilter("ends_at", "<=", instant))
            .limit(limit)
        )
        return [self._stored(s) for s in query.stream()]


@dataclass
class MemorySubscriptionStore:
    """An in-memory :class:`SubscriptionStore` for unit tests, with the same preconditions."""

    docs: dict[str, tuple[dict[str, Any], datetime]] = field(default_factory=dict)
    _clock: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def _tick(self) -> datetime:
        self._clock += timedelta(microseconds=1)
        return self._clock

    def get(self, subscription_id: str) -> StoredDocument | None:
        found = self.docs.get(subscription_id)
        if found is None:
            return None
        return StoredDocument(subscription_id, dict(found[0]), found[1])

    def create(self, subscription_id: str, data: Mapping[str, Any]) -> None:
        if subscription_id in self.docs:
            raise AlreadyExists(f"subscription {subscription_id!r} already exists")
        self.docs[subscription_id] = (dict(data), self._tick())

    def _check(self, subscription_id: str, if_updated_at: datetime | None) -> dict[str, Any]:
        found = self.docs.get(subscription_id)
        if found is None or (if_updated_at is not None and found[1] != if_updated_at):
            raise StoreConflict(f"subscription {subscription_id!r} changed meanwhile")
        return found[0]

    def replace(
        self, subscription_id: str, data: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        if if_updated_at is None:
            self.create(subscription_id, data)
            return
        self._check(subscription_id, if_updated_at)
        self.docs[subscription_id] = (dict(data), self._tick())

    def update(
        self, subscription_id: str, fields: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        current = self._check(subscription_id, if_updated_at)
        self.docs[subscription_id] = ({**current, **fields}, self._tick())

    def delete(self, subscription_id: str) -> bool:
        return self.docs.pop(subscription_id, None) is not None

    def page(self, page_size: int, after: str | None = None) -> list[StoredDocument]:
        ids = sorted(i for i in self.docs if after is None or i > after)[:page_size]
        return [StoredDocument(i, dict(self.docs[i][0]), self.docs[i][1]) for i in ids]

    def active_ending_by(self, instant: datetime, limit: int) -> list[StoredDocument]:
        found = [
            StoredDocument(i, dict(d), t)
            for i, (d, t) in sorted(self.docs.items())
            if d.get("status") == "active"
            and isinstance(d.get("ends_at"), datetime)
            and d["ends_at"] <= instant
        ]
        return found[:limit]
