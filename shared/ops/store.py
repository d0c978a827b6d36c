"""What the admin, maintenance and sync code needs of the ``subscriptions`` collection.

A narrow interface (:class:`SubscriptionStore`) so that these use cases never import a Google
client. The one implementation is :class:`shared.dal.firestore_store.FirestoreSubscriptionStore`
(which also serves select and fanout); unit tests use the in-memory fake of
``tests/unit/core/fakes.py``. Writes that depend on what was read are conditional on the
document's update time, and a lost race raises :class:`~shared.dal.records.StoreConflict`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol

from shared.dal.records import StoredSubscription

__all__ = ["SubscriptionStore", "iter_all"]


class SubscriptionStore(Protocol):
    """What admin, maintenance and sync do with the ``subscriptions`` collection."""

    def get(self, subscription_id: str) -> StoredSubscription | None:
        """The document, or ``None`` when it does not exist."""
        ...

    def create(self, subscription_id: str, data: Mapping[str, Any]) -> None:
        """Create the document; :class:`~shared.dal.records.AlreadyExists` if it is there."""
        ...

    def replace(
        self, subscription_id: str, data: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        """Overwrite the document, only if unchanged since ``if_updated_at`` (its update time)."""
        ...

    def update(
        self, subscription_id: str, fields: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        """Set some fields, only if unchanged since ``if_updated_at`` (else ``StoreConflict``).

        ``if_updated_at=None`` still requires the document to exist.
        """
        ...

    def delete(self, subscription_id: str) -> bool:
        """Delete the document; False when there was none."""
        ...

    def page(self, page_size: int, after: str | None = None) -> list[StoredSubscription]:
        """Up to ``page_size`` documents in id order, starting after id ``after``."""
        ...

    def active_ending_by(self, instant: datetime, limit: int) -> list[StoredSubscription]:
        """Up to ``limit`` documents with ``status == "active"`` and ``ends_at <= instant``."""
        ...


def iter_all(store: SubscriptionStore, page_size: int) -> Iterator[list[StoredSubscription]]:
    """Every document of the collection, one page at a time (never the whole list in memory)."""
    after: str | None = None
    while True:
        page = store.page(page_size, after)
        if page:
            yield page
        if len(page) < page_size:
            return
        after = page[-1].id
