"""The dispatch key (subscription id, slot, source id) and the Cloud Task name derived from it.

The key is the identity of one collection job: the ledger keeps it under a unique constraint and
Cloud Tasks refuses a second task with the same name (ALREADY_EXISTS). Both must agree, so the
name is a pure function of the key:

    <32 hex digits of SHA-256(canonical key)>-<readable suffix>

* the hashed prefix spreads names over Cloud Tasks' key space (sequential names such as
  timestamps make a hot spot, and the docs ask for a hashed prefix);
* the suffix (subscription, source, slot) is only for humans reading queue listings. It is
  sanitised to the task-id alphabet ``[A-Za-z0-9_-]`` and cut so that the id stays within
  Cloud Tasks' 500 characters. Uniqueness comes from the hash (128 bits), never the suffix.

The slot is canonicalised to a UTC RFC 3339 string before hashing, so ``09:00+01:00`` and
``08:00Z`` are one key (slots are whole minutes; fanout floors hand-typed ones).

The queue shard of a key (``[queues.<kind>] shards``) comes from the same SHA-256 digest
(:func:`shard_of`): a pure function of the key, so every attempt of a dispatch picks the same
queue and hence the same full task name, and keys spread evenly over the shards.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from shared.instants import format_slot

__all__ = [
    "MAX_TASK_ID_LENGTH",
    "DispatchKey",
    "shard_of",
    "task_id",
    "task_name",
]

MAX_TASK_ID_LENGTH: Final = 500
_HASH_CHARS: Final = 32
_NOT_ALLOWED: Final = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class DispatchKey:
    """One (subscription, slot, source): at most one Cloud Task ever exists for it."""

    subscription_id: str
    slot: datetime
    source_id: str

    def __post_init__(self) -> None:
        if self.slot.tzinfo is None or self.slot.utcoffset() is None:
            raise ValueError(f"slot must be timezone-aware, got naive {self.slot.isoformat()}")

    @property
    def slot_text(self) -> str:
        """The slot as the canonical RFC 3339 UTC string (``2026-01-05T09:00:00Z``)."""
        return format_slot(self.slot)

    def canonical(self) -> str:
        """The text that is hashed: ``<subscription>|<slot>|<source>`` (ids never hold ``|``)."""
        return f"{self.subscription_id}|{self.slot_text}|{self.source_id}"

    def to_json(self) -> dict[str, str]:
        """The ``dispatch_key`` object of the collector task body."""
        return {
            "subscription_id": self.subscription_id,
            "slot": self.slot_text,
            "source_id": self.source_id,
        }


def _digest(key: DispatchKey) -> str:
    return hashlib.sha256(key.canonical().encode("utf-8")).hexdigest()


def shard_of(key: DispatchKey, shards: int) -> int:
    """The queue shard (``0..shards-1``) of ``key``: its SHA-256 digest modulo ``shards``.

    Stable across processes and releases (no ``hash()`` salt); ``shards == 1`` is always 0, so a
    kind that never sharded keeps every task on its original queue.
    """
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    return int(_digest(key), 16) % shards


def task_id(key: DispatchKey) -> str:
    """The Cloud Tasks task id (last path segment) for ``key``; see the module docstring."""
    digest = _digest(key)[:_HASH_CHARS]
    stamp = key.slot.astimezone(UTC).strftime("%Y%m%dt%H%M%Sz")
    suffix = _NOT_ALLOWED.sub("_", f"{key.subscription_id}-{key.source_id}-{stamp}")
    room = MAX_TASK_ID_LENGTH - _HASH_CHARS - 1
    return f"{digest}-{suffix[:room]}"


def task_name(queue_path: str, key: DispatchKey) -> str:
    """The full task resource name: ``projects/p/locations/l/queues/q/tasks/<task_id>``."""
    return f"{queue_path}/tasks/{task_id(key)}"
