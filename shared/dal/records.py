"""Plain values (and the store's two outcome errors) that cross the boundary between the use
cases and the data-access adapters.

No Google client is imported here: the use cases and their unit-test fakes depend on these
values only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "Advance",
    "AlreadyExists",
    "DigestSchedule",
    "OutboundMessage",
    "StoreConflict",
    "StoredSubscription",
    "TaskRequest",
]


class StoreConflict(RuntimeError):  # noqa: N818 - a state, like the Firestore error it wraps
    """The document changed (or appeared, or vanished) since it was read: read again, retry."""


class AlreadyExists(RuntimeError):  # noqa: N818 - mirrors google.api_core's name
    """A create found a document with that id."""


@dataclass(frozen=True)
class StoredSubscription:
    """One ``subscriptions`` document as read: id, raw data, and what a conditional write needs.

    ``update_time`` is the document's last update time when it was read; a write conditioned on
    it fails if anybody wrote the document since (an overlapping tick, an operator). ``cursor``
    is the adapter's opaque paging handle (the Firestore snapshot).
    """

    id: str
    data: Mapping[str, Any]
    update_time: datetime | None = None
    cursor: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Advance:
    """One conditional advance select asks of the store: ``doc`` as read, and what to store.

    ``next_run_at`` is the next slot to plan from; ``expired`` marks the subscription expired
    instead (``next_run_at`` is then ignored and cleared). The write applies only if ``doc`` is
    unchanged since it was read (its ``update_time``).
    """

    doc: StoredSubscription
    next_run_at: datetime | None
    expired: bool = False


@dataclass(frozen=True)
class OutboundMessage:
    """One Pub/Sub message to publish: JSON bytes and string attributes."""

    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskRequest:
    """One HTTP Cloud Task to create.

    ``name`` is the full task resource name (derived from the dispatch key), ``queue`` the full
    queue path; the request POSTs ``body`` (JSON) to ``url`` with an OIDC token for
    ``service_account`` whose audience is ``audience``.
    """

    name: str
    queue: str
    url: str
    body: bytes
    schedule_time: datetime
    service_account: str
    audience: str


@dataclass(frozen=True)
class DigestSchedule:
    """One ``delivery_schedules`` document as read (id ``<subscription>.<delivery>``).

    ``next_run_at`` is the next digest slot to plan (``None``: retired, never due); ``last_slot``
    the slot of the last digest planned, where the next one's period starts. ``cron`` and
    ``timezone`` are the delivery's schedule when the document was last written, so an edit of
    the cron is seen and ``next_run_at`` recomputed. ``version`` is the adapter's opaque
    precondition token (the Firestore update time): a write conditioned on it fails if anybody
    wrote the document since it was read.
    """

    subscription_id: str
    delivery_id: str
    next_run_at: datetime | None
    last_slot: datetime | None = None
    version: object = None
    cron: str | None = None
    timezone: str | None = None

    @property
    def id(self) -> str:
        """The document id."""
        return schedule_id(self.subscription_id, self.delivery_id)


def schedule_id(subscription_id: str, delivery_id: str) -> str:
    """``<subscription>.<delivery>``: unambiguous, as neither id may contain a dot."""
    return f"{subscription_id}.{delivery_id}"
