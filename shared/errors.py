"""Errors that say what to do with the message that caused them.

Two families, and the entry-point wrapper (:mod:`shared.handler`) routes on nothing else:

* :class:`PermanentError` — retrying cannot help (bad JSON, not UTF-8, wrong base64, schema
  violation, unknown subscription, payload too large). The message is published to the topic's
  dead-letter topic with the reason in its attributes, then acknowledged.
* :class:`RetryableError` — the world may be different next time (a dependency is down, a timeout,
  a conflict to retry). The invocation fails (HTTP 5xx) and Pub/Sub redelivers; after the
  subscription's max delivery attempts Pub/Sub's own dead-letter policy forwards the message.

Wrap foreign exceptions where they are caught, keeping the cause::

    except google.api_core.exceptions.ServiceUnavailable as exc:
        raise DependencyUnavailableError("firestore", str(exc)) from exc
"""

from __future__ import annotations

from typing import Any

# Pub/Sub refuses attribute values over 1024 bytes; reasons travel as attributes.
_VALUE_PREVIEW_CHARS = 200


def shorten(text: str, limit_bytes: int) -> str:
    """Cut ``text`` to at most ``limit_bytes`` UTF-8 bytes, marking the cut with an ellipsis.

    The cut never splits a character, so the result is always valid UTF-8.
    """
    if limit_bytes <= 0:
        return ""
    # "replace": a lone surrogate (possible in JSON text) cannot be sent to Pub/Sub.
    encoded = text.encode("utf-8", errors="replace")
    if len(encoded) <= limit_bytes:
        return encoded.decode("utf-8")
    marker = "…"
    budget = max(limit_bytes - len(marker.encode("utf-8")), 0)
    cut = encoded[:budget].decode("utf-8", errors="ignore")
    return cut + marker if budget else cut


def preview(value: Any, limit: int = _VALUE_PREVIEW_CHARS) -> str:
    """A short, log-safe representation of an offending value (``repr``, cut to ``limit`` chars)."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not turn a rejection into a crash
        text = f"<unrepresentable {type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}…"


class DispatcherError(Exception):
    """Base of every error the dispatcher raises on purpose."""

    #: Whether a redelivery could succeed; subclasses fix it.
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def reason_class(self) -> str:
        """The name put in logs and in the ``dlq_reason_class`` attribute."""
        return type(self).__name__

    def details(self) -> dict[str, str]:
        """Extra reason fields (JSON path, rule, ...) for logs and dead-letter attributes."""
        return {}


class PermanentError(DispatcherError):
    """Retrying cannot help: dead-letter the message with a reason, then acknowledge it."""

    retryable = False


class RetryableError(DispatcherError):
    """Retrying may help: fail the invocation so Pub/Sub redelivers."""

    retryable = True


# --- permanent -----------------------------------------------------------------------------


class EnvelopeError(PermanentError):
    """The push request or CloudEvent is not a Pub/Sub message (field missing or of wrong type)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def details(self) -> dict[str, str]:
        return {"path": self.field} if self.field else {}


class PayloadDecodeError(PermanentError):
    """The message data cannot be turned into a JSON value."""


class Base64DecodeError(PayloadDecodeError):
    """``message.data`` is not valid base64."""


class NotUtf8Error(PayloadDecodeError):
    """The data bytes are not UTF-8 text."""

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position

    def details(self) -> dict[str, str]:
        return {"path": f"byte {self.position}"}


class JsonDecodeError(PayloadDecodeError):
    """The data is text but not a JSON document (or nests too deeply, or uses NaN/Infinity)."""

    def __init__(self, message: str, *, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column

    def details(self) -> dict[str, str]:
        if self.line is None:
            return {}
        return {"path": f"line {self.line} column {self.column}"}


class PayloadTooLargeError(PermanentError):
    """The data is larger than the configured ``max_payload_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload is {size} bytes, the limit is {limit}")
        self.size = size
        self.limit = limit

    def details(self) -> dict[str, str]:
        return {"rule": "max_payload_bytes", "value": str(self.size)}


class SchemaValidationError(PermanentError):
    """The payload violates its contract.

    ``path`` is the JSON path of the offending value (``$.sources[0].id``), ``rule`` the failing
    JSON Schema keyword (``pattern``), ``schema_path`` where that rule sits in the schema
    (``due.v1.json#/properties/slot/format``) and ``value`` a shortened repr of the value.
    ``issues`` holds every violation found, the most relevant first.
    """

    def __init__(
        self,
        message: str,
        *,
        schema: str,
        path: str,
        rule: str,
        schema_path: str,
        value: str,
        issues: tuple[ValidationIssue, ...] = (),
    ) -> None:
        super().__init__(message)
        self.schema = schema
        self.path = path
        self.rule = rule
        self.schema_path = schema_path
        self.value = value
        self.issues = issues

    def details(self) -> dict[str, str]:
        return {
            "path": self.path,
            "rule": self.rule,
            "schema_path": self.schema_path,
            "value": self.value,
        }


class UnknownSubscriptionError(PermanentError):
    """The message names a subscription that does not exist (deleted, or a typo)."""

    def __init__(self, subscription_id: str) -> None:
        super().__init__(f"subscription {subscription_id!r} does not exist")
        self.subscription_id = subscription_id

    def details(self) -> dict[str, str]:
        return {"path": "$.subscription_id", "value": preview(self.subscription_id)}


class InvalidRequestError(PermanentError):
    """The payload passed its schema but asks for the impossible (e.g. shard ≥ shard_count)."""


class TaskRejectedError(PermanentError):
    """Cloud Tasks refused a task with an answer no retry can change (INVALID_ARGUMENT, NOT_FOUND
    queue, PERMISSION_DENIED, FAILED_PRECONDITION): someone has to fix the queue, the grant or
    the message first. ``code`` is the gRPC status name, ``task_name`` the full task name."""

    def __init__(self, task_name: str, code: str, message: str) -> None:
        super().__init__(f"Cloud Tasks refused {task_name} with {code}: {message}")
        self.task_name = task_name
        self.code = code

    @property
    def queue(self) -> str:
        """The queue part of the task name."""
        return self.task_name.split("/tasks/", 1)[0]

    def details(self) -> dict[str, str]:
        return {"path": self.task_name, "rule": self.code, "value": self.queue}


# --- retryable -----------------------------------------------------------------------------


class DependencyUnavailableError(RetryableError):
    """A dependency (Firestore, PostgreSQL, Cloud Tasks, Pub/Sub) refused or is down."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency} unavailable: {message}")
        self.dependency = dependency


class DependencyTimeoutError(RetryableError):
    """A call to a dependency did not finish in time."""

    def __init__(self, dependency: str, message: str) -> None:
        super().__init__(f"{dependency} timed out: {message}")
        self.dependency = dependency


class ConflictError(RetryableError):
    """A concurrent writer won a race (transaction aborted, precondition failed): try again."""


class DeadLetterPublishError(RetryableError):
    """Publishing a rejected message to its dead-letter topic failed; redelivery retries it."""


class ValidationIssue:
    """One schema violation: where, which rule, which value, and the validator's message."""

    __slots__ = ("message", "path", "rule", "schema_path", "value")

    def __init__(self, *, path: str, rule: str, schema_path: str, value: str, message: str) -> None:
        self.path = path
        self.rule = rule
        self.schema_path = schema_path
        self.value = value
        self.message = message

    def as_dict(self) -> dict[str, str]:
        """Plain-data form, for ``--json`` output and logs."""
        return {
            "path": self.path,
            "rule": self.rule,
            "schema_path": self.schema_path,
            "value": self.value,
            "message": self.message,
        }

    def __repr__(self) -> str:
        return f"ValidationIssue(path={self.path!r}, rule={self.rule!r}, value={self.value!r})"
