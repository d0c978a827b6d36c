"""The delivery key (subscription, delivery, slot, recipient) and what is derived from it.

One email transaction is one delivery key: the ledger keeps it under a unique constraint
(``email_deliveries``), the Cloud Task on the ``email`` queue is named from its hash, and the
email's ``Message-ID`` header is derived from the same hash. Because all three are pure
functions of the key, every retry, replay or duplicate of a delivery carries the same task name
and the same Message-ID: a second task is refused by Cloud Tasks (ALREADY_EXISTS) and by the
ledger, and a second copy of the email, should one ever leave (the crash window documented in
docs/deliveries.md), is recognisable as the same message by any mail client or archive.

* ``slot``: for a scheduled digest the cron slot; for an ``after: run`` alert the slot of the
  run that completed (one run per (subscription, slot), so one alert per run).
* ``recipient`` is compared in lower case: the schema refuses two spellings of one address in a
  declaration, and an edit that only changes case must not make a second key for the same slot.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from shared.instants import format_slot

__all__ = ["DeliveryKey", "email_task_id", "message_id"]

_HASH_CHARS: Final = 32
_MAX_TASK_ID_LENGTH: Final = 500
_NOT_ALLOWED: Final = re.compile(r"[^A-Za-z0-9_-]+")
# RFC 5322 msg-id right part: a dot-atom. Anything else from configuration is refused.
_DOMAIN: Final = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9-]+)*\Z")


@dataclass(frozen=True)
class DeliveryKey:
    """One email to one recipient for one delivery slot: sent at most once (see module doc)."""

    subscription_id: str
    delivery_id: str
    slot: datetime
    recipient: str

    def __post_init__(self) -> None:
        if self.slot.tzinfo is None or self.slot.utcoffset() is None:
            raise ValueError(f"slot must be timezone-aware, got naive {self.slot.isoformat()}")
        # Normalised once here so that every derived value agrees (frozen: set via object).
        object.__setattr__(self, "recipient", self.recipient.lower())

    @property
    def slot_text(self) -> str:
        """The slot as the canonical RFC 3339 UTC string (``2026-01-05T13:00:00Z``)."""
        return format_slot(self.slot)

    def canonical(self) -> str:
        """The hashed text. The ``email|`` prefix keeps it apart from collection dispatch keys."""
        return f"email|{self.subscription_id}|{self.delivery_id}|{self.slot_text}|{self.recipient}"

    def digest(self) -> str:
        """32 hex digits of SHA-256 of :meth:`canonical`: the task id prefix and Message-ID."""
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()[:_HASH_CHARS]

    def to_json(self) -> dict[str, str]:
        """The ``delivery_key`` object of the email task body."""
        return {
            "subscription_id": self.subscription_id,
            "delivery_id": self.delivery_id,
            "slot": self.slot_text,
            "recipient": self.recipient,
        }


def email_task_id(key: DeliveryKey) -> str:
    """The Cloud Tasks task id: hashed prefix (spreads the key space), readable suffix."""
    stamp = key.slot.astimezone(UTC).strftime("%Y%m%dt%H%M%Sz")
    suffix = _NOT_ALLOWED.sub("_", f"{key.subscription_id}-{key.delivery_id}-{stamp}")
    room = _MAX_TASK_ID_LENGTH - _HASH_CHARS - 1
    return f"{key.digest()}-{suffix[:room]}"


def message_id(key: DeliveryKey, domain: str) -> str:
    """The stable ``Message-ID`` header value, ``<hash.delivery@domain>``.

    The recipient is inside the hash, not in clear: Message-IDs travel in ``References`` headers
    of replies and forwards, and must not leak one subscriber's address to another.
    """
    if not _DOMAIN.match(domain):
        raise ValueError(f"message id domain {domain!r} is not a dot-atom host name")
    return f"<{key.digest()}.{key.delivery_id}@{domain}>"
