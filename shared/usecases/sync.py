"""Sync (topic ``dispatcher-sync``): make the PostgreSQL subscription mirror equal to Firestore.

``{"subscription_id": "x"}`` copies one document (or deletes its mirror row when the document is
gone); ``{"all": true}`` pages through the collection, upserts every page (rows already equal are
not rewritten) and finally deletes mirror rows whose document no longer exists. Idempotent: a
second run reports everything unchanged. One structured log line carries the counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.dal.records import StoredSubscription
from shared.envelope import PushMessage
from shared.ops import runtime
from shared.ops.store import SubscriptionStore, iter_all

if TYPE_CHECKING:
    from shared.ledger.repository import Ledger, MirrorDoc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncCounts:
    """What one sync changed in the mirror."""

    scanned: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    pages: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain data for logs and ``--json``."""
        return {
            "scanned": self.scanned,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "pages": self.pages,
        }


def sync_subscriptions(payload: dict[str, Any], message: PushMessage) -> None:
    """Use case of the sync function (see the module docstring)."""
    from shared.config import get_settings

    run_sync(
        payload,
        store_factory=runtime.store,
        ledger_factory=runtime.ledger,
        page_size=get_settings().firestore_page_size,
    )


def run_sync(
    payload: Mapping[str, Any],
    *,
    store_factory: Callable[[], SubscriptionStore],
    ledger_factory: Callable[[], Ledger],
    page_size: int,
) -> SyncCounts:
    """Sync one subscription or all of them; returns (and logs) the counts."""
    started = time.monotonic()
    only = payload.get("subscription_id")
    with runtime.dependency("firestore/postgresql"):
        store, ledger = store_factory(), ledger_factory()
        if isinstance(only, str):
            counts = _sync_one(store, ledger, only)
        else:
            counts = _sync_all(store, ledger, page_size)
    scope = only if isinstance(only, str) else "all"
    logger.info(
        "sync %s: %s",
        scope,
        ", ".join(f"{k}={v}" for k, v in counts.as_dict().items()),
        extra={
            "sync_scope": scope,
            "counts": counts.as_dict(),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            **({"subscription_id": only} if isinstance(only, str) else {}),
        },
    )
    return counts


def _mirror_doc(doc: StoredSubscription) -> MirrorDoc:
    from shared.ledger.repository import MirrorDoc

    return MirrorDoc.from_document(doc.id, dict(doc.data), updated_at=doc.update_time)


def _sync_one(store: SubscriptionStore, ledger: Ledger, subscription_id: str) -> SyncCounts:
    doc = store.get(subscription_id)
    if doc is None:
        return SyncCounts(deleted=ledger.delete_mirror([subscription_id]))
    result = ledger.upsert_mirror([_mirror_doc(doc)])
    return SyncCounts(
        scanned=1,
        inserted=result.inserted,
        updated=result.updated,
        unchanged=result.unchanged,
        pages=1,
    )


def _sync_all(store: SubscriptionStore, ledger: Ledger, page_size: int) -> SyncCounts:
    seen: set[str] = set()
    scanned = inserted = updated = unchanged = pages = 0
    for page in iter_all(store, page_size):
        result = ledger.upsert_mirror([_mirror_doc(doc) for doc in page])
        seen.update(doc.id for doc in page)
        pages += 1
        scanned += len(page)
        inserted += result.inserted
        updated += result.updated
        unchanged += result.unchanged
    # Deleting after the scan: a document created mid-scan is upserted next time; one deleted
    # mid-scan is removed next time. Nothing is deleted that Firestore still had when scanned.
    deleted = ledger.delete_mirror(sorted(ledger.mirror_ids() - seen))
    return SyncCounts(scanned, inserted, updated, unchanged, deleted, pages)
