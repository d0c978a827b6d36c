"""Dead-letter routing for permanent errors: same bytes, reason in the attributes.

A rejected message is published to ``<topic>-dlq`` with its original data unchanged and its
original attributes preserved, plus ``dlq_*`` attributes saying why (see
``schemas/dead-letter.v1.json``). The caller acknowledges the original only after
:meth:`DeadLetterPublisher.publish` returned, so a failed publish fails the invocation and Pub/Sub
redelivers: nothing is lost.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from shared import clients, config
from shared.errors import DispatcherError, shorten
from shared.instants import format_instant

#: Pub/Sub's limits on attributes (bytes, count).
MAX_ATTRIBUTE_VALUE_BYTES = 1024
MAX_ATTRIBUTES = 100
PREFIX = "dlq_"

# What the message data of a dead letter is: the original message data (replayable as is), or
# the whole push request body when the envelope itself could not be unwrapped.
DATA_MESSAGE = "message-data"
DATA_PUSH_BODY = "push-body"

# Required by schemas/dead-letter.v1.json, most important first.
_REQUIRED = (
    "dlq_reason_class",
    "dlq_reason",
    "dlq_source_topic",
    "dlq_source_message_id",
    "dlq_failed_at",
    "dlq_function",
)


class DeadLetterPublisher(Protocol):
    """Publishes one message and returns its message id once Pub/Sub has accepted it.

    Must raise if the publish did not succeed within its timeout.
    """

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish ``data`` with ``attributes`` to the short topic name ``topic``."""
        ...


@dataclass(frozen=True)
class DeadLetter:
    """What goes to the dead-letter topic."""

    topic: str
    data: bytes
    attributes: Mapping[str, str]


def build_dead_letter(
    *,
    error: DispatcherError,
    source_topic: str,
    dead_letter_topic: str,
    function: str,
    data: bytes,
    attributes: Mapping[str, str],
    message_id: str,
    subscription: str | None = None,
    publish_time: str | None = None,
    delivery_attempt: int | None = None,
    data_kind: str = DATA_MESSAGE,
    now: Callable[[], datetime] | None = None,
) -> DeadLetter:
    """Combine the original message and the reason into the dead letter to publish.

    Original attributes are kept; any stale ``dlq_*`` ones (a replayed dead letter that failed
    again) are replaced by the new reason. Every value is cut to Pub/Sub's 1024-byte limit.
    """
    failed_at = format_instant((now or _utcnow)())
    details = error.details()
    reason: dict[str, str | None] = {
        "dlq_reason_class": error.reason_class,
        "dlq_reason": error.message or error.reason_class,
        "dlq_source_topic": source_topic,
        "dlq_source_message_id": message_id or "(none)",
        "dlq_failed_at": failed_at,
        "dlq_function": function,
        "dlq_rule": details.get("rule"),
        "dlq_path": details.get("path"),
        "dlq_schema_path": details.get("schema_path"),
        "dlq_value": details.get("value"),
        "dlq_source_subscription": subscription,
        "dlq_source_publish_time": publish_time,
        "dlq_delivery_attempt": None if delivery_attempt is None else str(delivery_attempt),
        "dlq_data": data_kind,
    }
    out = {k: v for k, v in attributes.items() if not k.startswith(PREFIX)}
    # Required reasons first, in priority order, then the optional ones, while Pub/Sub's
    # 100-attribute limit allows; original attributes are never dropped. Only a message that
    # already carries 99+ attributes loses reasons (the class and message come first).
    ordered = [*_REQUIRED, *(k for k in reason if k not in _REQUIRED)]
    for key in ordered:
        value = reason[key]
        if not value:
            continue
        if len(out) >= MAX_ATTRIBUTES:
            break
        out[key] = shorten(value, MAX_ATTRIBUTE_VALUE_BYTES)
    return DeadLetter(topic=dead_letter_topic, data=bytes(data), attributes=out)


class PubSubDeadLetterPublisher:
    """Production :class:`DeadLetterPublisher`: ``shared.clients.publisher()``, waits on it."""

    def __init__(
        self,
        *,
        project: str | None = None,
        timeout_seconds: float | None = None,
        client: Any = None,
    ) -> None:
        self._project = project
        self._timeout = timeout_seconds
        self._client = client

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        """Publish and block until Pub/Sub accepted the message (or raise)."""
        project, timeout = self._project, self._timeout
        if project is None or timeout is None:
            settings = config.get_settings()
            project = project or settings.project
            timeout = timeout or settings.publish_timeout_seconds
        client = self._client
        if client is None:
            client = clients.publisher()
        path = f"projects/{project}/topics/{topic}"
        if _collides_with_publish_kwargs(attributes):
            # publish(topic, data, ordering_key=..., retry=..., timeout=..., **attrs) cannot take
            # an attribute named like one of its parameters; the GAPIC call takes a plain dict.
            response = client._gapic_publish(
                topic=path,
                messages=[{"data": data, "attributes": dict(attributes)}],
                timeout=timeout,
            )
            return str(response.message_ids[0])
        future = client.publish(path, data, **attributes)
        return str(future.result(timeout=timeout))


def _collides_with_publish_kwargs(attributes: Mapping[str, str]) -> bool:
    return any(k in {"topic", "data", "ordering_key", "retry", "timeout"} for k in attributes)


def _utcnow() -> datetime:
    return datetime.now(UTC)
