"""The ``delivery_schedules`` collection in Firestore: one document per scheduled digest.

Document id ``<subscription>.<delivery>`` (neither id may contain a dot), fields
``subscription_id``, ``delivery_id``, ``cron``, ``timezone`` (the delivery's schedule as last
written), ``next_run_at`` (the next slot to plan; ``null`` once retired), ``last_slot`` (the
last digest planned: where the next one's period starts), ``retired_reason`` and ``updated_at``.

Two consumers, two narrow Protocols, one class:

* select's digest path (:class:`shared.usecases.select_digests.DigestScheduleStore`): the due
  query ``next_run_at <= now order by next_run_at limit n`` -- one range filter and an order on
  the same field, which Firestore serves from its automatic single-field index (no composite
  index; ``tests/unit/deploy`` checks that none is declared for it) -- and ``advance``, a write
  conditioned on the document's update time as read: a lost race answers False;
* the subscription admin (:class:`shared.ops.delivery_schedules.ScheduleAdmin`): the schedules
  of one subscription (equality on ``subscription_id``, also single-field), create, and
  conditional update.

A retired document keeps its ``last_slot``, so a delivery added back later continues its period.
``null`` never matches a range filter on timestamps, so retired documents are never read by the
due query. Errors: the same timeouts, retry budget and translation into
:class:`~shared.errors.RetryableError` as :mod:`shared.dal.firestore_store`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from google.api_core import exceptions as gexc

from shared.dal.firestore_store import (
    FirestoreAdapter,
    _conflict,
    _retry,
    _translate,
)
from shared.dal.records import AlreadyExists, DigestSchedule, StoreConflict
from shared.errors import DependencyUnavailableError

if TYPE_CHECKING:
    pass

__all__ = ["COLLECTION", "FirestoreDigestSchedules", "digest_due_query"]

logger = logging.getLogger(__name__)

COLLECTION: Final = "delivery_schedules"


def digest_due_query(collection: Any, now: datetime, limit: int) -> Any:
    """Due digest schedules, oldest first: one range filter, ordered by the same field."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    return (
        collection.where(filter=FieldFilter("next_run_at", "<=", now))
        .order_by("next_run_at")
        .limit(limit)
    )


class FirestoreDigestSchedules(FirestoreAdapter):
    """Reads and conditional writes on ``delivery_schedules``."""

    default_collection = COLLECTION

    # -- select ----------------------------------------------------------------------------------

    def due(self, now: datetime, limit: int) -> list[DigestSchedule]:
        """Up to ``limit`` schedules with ``next_run_at <= now``, oldest first."""
        query = digest_due_query(self.client.collection(self._collection), now, limit)
        return _translate("digest due query", lambda: self._run(query))

    def advance(
        self, schedule: DigestSchedule, next_run_at: datetime | None, last_slot: datetime | None
    ) -> bool:
        """Store ``next_run_at`` and ``last_slot`` if the document is unchanged since it was read
        (its update time); False if somebody wrote it meanwhile (an overlapping tick, an edit)
        or deleted it. ``next_run_at=None`` retires the schedule."""
        fields: dict[str, Any] = {
            "next_run_at": next_run_at,
            "last_slot": last_slot,
            "updated_at": _server_time(),
        }
        if next_run_at is None:
            fields["retired_reason"] = "retired by select: no longer wanted"
        try:
            self._conditional_update(schedule.id, fields, schedule.version, what="schedule")
        except StoreConflict:
            return False
        return True

    # -- the subscription admin ------------------------------------------------------------------

    def for_subscription(self, subscription_id: str) -> list[DigestSchedule]:
        """Every schedule document of one subscription, retired ones included."""
        from google.cloud.firestore_v1.base_query import FieldFilter

        query = self.client.collection(self._collection).where(
            filter=FieldFilter("subscription_id", "==", subscription_id)
        )
        return _translate(f"schedules of {subscription_id}", lambda: self._run(query))

    def get(self, subscription_id: str, delivery_id: str) -> DigestSchedule | None:
        """One schedule document, or ``None``."""
        ref = self._ref(f"{subscription_id}.{delivery_id}")
        snapshot = _translate(
            f"get schedule {subscription_id}.{delivery_id}",
            lambda: ref.get(retry=_retry(self._retry_budget), timeout=self._timeout),
        )
        return _record(snapshot) if snapshot.exists else None

    def create(self, schedule: DigestSchedule) -> None:
        """Create the document; :class:`AlreadyExists` if it is there."""
        ref = self._ref(schedule.id)
        data = _document(schedule)
        try:
            _translate(
                f"create schedule {schedule.id}",
                lambda: ref.create(data, retry=_retry(self._retry_budget), timeout=self._timeout),
            )
        except DependencyUnavailableError as exc:
            if _conflict(exc, (gexc.Conflict,)):  # AlreadyExists is a Conflict
                raise AlreadyExists(f"schedule {schedule.id!r} already exists") from exc
            raise

    def update(self, schedule: DigestSchedule, fields: Mapping[str, Any]) -> None:
        """Set some fields if the document is unchanged since ``schedule`` was read, else
        :class:`StoreConflict`."""
        self._conditional_update(
            schedule.id, {**fields, "updated_at": _server_time()}, schedule.version, what="schedule"
        )

    # -- plumbing --------------------------------------------------------------------------------

    def _run(self, query: Any) -> list[DigestSchedule]:
        snapshots = query.stream(retry=_retry(self._retry_budget), timeout=self._timeout)
        return [_record(snapshot) for snapshot in snapshots if snapshot.exists]

    def put_many(self, schedules: Sequence[DigestSchedule]) -> None:
        """Write whole documents unconditionally (tests and seeding; not on the hot path)."""
        batch = self.client.batch()
        for schedule in schedules:
            batch.set(self._ref(schedule.id), _document(schedule))
        _translate("schedules batch write", lambda: batch.commit(timeout=self._timeout))


def _document(schedule: DigestSchedule) -> dict[str, Any]:
    """A live schedule document as written (create, or a whole rewrite)."""
    return {
        "subscription_id": schedule.subscription_id,
        "delivery_id": schedule.delivery_id,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "next_run_at": schedule.next_run_at,
        "last_slot": schedule.last_slot,
        "retired_reason": None,
        "updated_at": _server_time(),
    }


def _server_time() -> Any:
    from google.cloud import firestore

    return firestore.SERVER_TIMESTAMP


def _record(snapshot: Any) -> DigestSchedule:
    data: Mapping[str, Any] = snapshot.to_dict() or {}

    def instant(name: str) -> datetime | None:
        value = data.get(name)
        return value if isinstance(value, datetime) else None

    def text(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) else None

    subscription_id, _, delivery_id = str(snapshot.id).partition(".")
    return DigestSchedule(
        subscription_id=text("subscription_id") or subscription_id,
        delivery_id=text("delivery_id") or delivery_id,
        next_run_at=instant("next_run_at"),
        last_slot=instant("last_slot"),
        # The precondition token: the document's update time as read.
        version=snapshot.update_time,
        cron=text("cron"),
        timezone=text("timezone"),
    )
