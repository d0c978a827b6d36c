"""The one place that knows how a Pub/Sub message reaches a function.

Three encodings arrive at the same functions, and all become one :class:`PushMessage`:

* the raw push request body Pub/Sub (and the emulator) POSTs to a push endpoint::

      {"message": {"data": "<base64>", "attributes": {...}, "messageId": "1",
                   "publishTime": "..."}, "subscription": "projects/p/subscriptions/s",
       "deliveryAttempt": 2}

  The emulator sends no ``deliveryAttempt`` (nor does Pub/Sub without a dead-letter policy) and
  also sends the snake_case twins ``message_id`` / ``publish_time``; a message published with
  attributes only has no ``data``.
* the CloudEvent functions-framework makes of that body for ``@cloud_event`` functions: its
  ``data`` is ``{"message": {"@type", "data", "attributes", "messageId", "publishTime"}}`` —
  ``subscription`` and ``deliveryAttempt`` are dropped by the conversion, so
  :func:`from_cloud_event` takes them back from the raw request body when it has it.
* a real CloudEvent (Eventarc, binary or structured mode) whose data is the push body.

Only the envelope is checked here; decoding the data (:func:`decode_json`) and validating it
against a contract (:mod:`shared.contracts`) are separate steps.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from cloudevents.exceptions import GenericException
from cloudevents.http import from_http

from shared.errors import (
    Base64DecodeError,
    EnvelopeError,
    JsonDecodeError,
    NotUtf8Error,
    preview,
)

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
# A message id from Pub/Sub is a decimal string; hand-made pushes use anything printable.
_MAX_ID_CHARS = 256
_TRACE_ATTRIBUTES = ("googclient_traceparent", "traceparent")


@functools.lru_cache(maxsize=4096)
def parse_rfc3339(text: str) -> datetime:
    """Parse an RFC 3339 date-time with an explicit offset into an aware ``datetime``.

    Fractions beyond microseconds (Pub/Sub sends nanoseconds) are truncated. Raises
    ``ValueError`` for anything else, including leap seconds, which ``datetime`` cannot hold.

    Cached (a ``datetime`` is immutable): one fanout message parses the same slot and snapshot
    times several times over (its envelope, the contract's date-time checks of the message and
    of each task body, the snapshot's age), and every message of a tick carries the same slot.
    """
    match = _RFC3339.fullmatch(text)
    if not match:
        raise ValueError(f"{preview(text)} is not an RFC 3339 date-time")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    if offset in ("Z", "z"):
        tz: timezone = UTC
    else:
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"{preview(text)} has an impossible UTC offset")
        delta = timedelta(hours=hours, minutes=minutes)
        tz = timezone(-delta if offset[0] == "-" else delta)
    return datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micros, tzinfo=tz
    )


@dataclass(frozen=True)
class PushMessage:
    """One Pub/Sub message as delivered to a function, envelope unwrapped, data still bytes."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    publish_time: datetime | None = None
    delivery_attempt: int | None = None
    subscription: str | None = None
    ordering_key: str | None = None
    #: The W3C ``traceparent`` (or ``X-Cloud-Trace-Context``) that came with the message.
    trace_header: str | None = None
    #: Which encoding it arrived in: ``push`` or ``cloudevent``.
    encoding: str = "push"

    @property
    def subscription_short(self) -> str | None:
        """The subscription id without ``projects/<p>/subscriptions/``."""
        if self.subscription is None:
            return None
        return self.subscription.rsplit("/", 1)[-1]


def parse_push_body(body: Any, *, headers: Mapping[str, str] | None = None) -> PushMessage:
    """Unwrap a raw Pub/Sub push request body (bytes, text or already-parsed JSON).

    Raises :class:`~shared.errors.EnvelopeError` when it is not a push body.
    """
    if isinstance(body, bytes | bytearray | str):
        try:
            body = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise EnvelopeError("push request body is not JSON", field="$") from exc
    if not isinstance(body, Mapping):
        raise EnvelopeError(
            f"push request body must be a JSON object, got {type(body).__name__}", field="$"
        )
    return _from_push_mapping(body, headers=headers, encoding="push")


def from_cloud_event(
    event: Any,
    *,
    raw_body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> PushMessage:
    """Unwrap the CloudEvent functions-framework hands to a ``@cloud_event`` function.

    ``raw_body`` (the parsed push request, when the caller can reach it) restores
    ``subscription`` and ``deliveryAttempt``, which the framework's conversion drops; it is
    used only when it describes the same message.
    """
    try:
        data = event.data
        event_id = event["id"]
        event_time = event.get("time") if hasattr(event, "get") else None
    except (AttributeError, KeyError, TypeError) as exc:
        raise EnvelopeError("not a CloudEvent", field="$") from exc
    if isinstance(data, bytes | bytearray | str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise EnvelopeError("CloudEvent data is not JSON", field="$.data") from exc
    if not isinstance(data, Mapping):
        raise EnvelopeError(
            f"CloudEvent data must be an object, got {type(data).__name__}", field="$.data"
        )
    body: dict[str, Any] = dict(data)
    message = body.get("message")
    if isinstance(message, Mapping):
        message = dict(message)
        # The conversion moved these into the CloudEvent's own attributes.
        if not _first_str(message, "messageId", "message_id") and isinstance(event_id, str):
            message["messageId"] = event_id
        if not _first_str(message, "publishTime", "publish_time") and isinstance(event_time, str):
            message["publishTime"] = event_time
        body["message"] = message
    if isinstance(raw_body, Mapping) and isinstance(message, dict):
        raw_message = raw_body.get("message")
        if isinstance(raw_message, Mapping) and _first_str(
            raw_message, "messageId", "message_id"
        ) == _first_str(message, "messageId", "message_id"):
            body.setdefault("subscription", raw_body.get("subscription"))
            body.setdefault("deliveryAttempt", raw_body.get("deliveryAttempt"))
            if "orderingKey" in raw_message:
                message.setdefault("orderingKey", raw_message["orderingKey"])
    return _from_push_mapping(body, headers=headers, encoding="cloudevent")


def parse_http_request(headers: Mapping[str, str], body: bytes) -> PushMessage:
    """Unwrap an HTTP request that is a raw push body or a binary/structured CloudEvent."""
    lowered = {k.lower(): v for k, v in headers.items()}
    content_type = lowered.get("content-type", "")
    if "ce-specversion" in lowered or content_type.startswith("application/cloudevents+json"):
        try:
            event = from_http(dict(headers), body)
        except (GenericException, ValueError, TypeError, RecursionError) as exc:
            raise EnvelopeError(f"malformed CloudEvent: {preview(str(exc))}", field="$") from exc
        return from_cloud_event(event, headers=headers)
    return parse_push_body(body, headers=headers)


def decode_json(data: bytes) -> Any:
    """Decode message data: UTF-8 text holding one JSON document.

    Raises :class:`~shared.errors.NotUtf8Error` or :class:`~shared.errors.JsonDecodeError`.
    ``NaN`` and ``Infinity`` are refused (not JSON, and other consumers cannot read them).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8Error(
            f"data is not UTF-8 (byte {exc.start}: {exc.reason})", position=exc.start
        ) from exc
    if not text.strip():
        raise JsonDecodeError("data is empty; send a JSON object such as {}")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsonDecodeError(
            f"data is not JSON: {exc.msg} (line {exc.lineno} column {exc.colno})",
            line=exc.lineno,
            column=exc.colno,
        ) from exc
    except RecursionError as exc:
        raise JsonDecodeError("data nests JSON too deeply") from exc
    except ValueError as exc:
        raise JsonDecodeError(f"data is not JSON: {exc}") from exc


def decode_base64(text: str) -> bytes:
    """Decode ``message.data``: standard or URL-safe base64, padding optional (proto3 JSON)."""
    compact = text.strip()
    padded = compact + "=" * (-len(compact) % 4)
    for altchars in (None, b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            continue
    raise Base64DecodeError(f"message.data is not valid base64: {preview(text, 60)}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _from_push_mapping(
    body: Mapping[str, Any], *, headers: Mapping[str, str] | None, encoding: str
) -> PushMessage:
    message = body.get("message")
    if not isinstance(message, Mapping):
        raise EnvelopeError("push body has no 'message' object", field="$.message")
    message_id = _first_str(message, "messageId", "message_id")
    if not message_id:
        raise EnvelopeError("message has no messageId", field="$.message.messageId")
    if len(message_id) > _MAX_ID_CHARS:
        raise EnvelopeError("messageId is too long", field="$.message.messageId")

    raw_data = message.get("data", "")
    if raw_data is None:
        raw_data = ""
    if not isinstance(raw_data, str):
        raise EnvelopeError(
            f"message.data must be a base64 string, got {type(raw_data).__name__}",
            field="$.message.data",
        )
    data = decode_base64(raw_data) if raw_data else b""

    attributes = message.get("attributes")
    if attributes is None:
        attributes = {}
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
    ):
        raise EnvelopeError(
            "message.attributes must map strings to strings", field="$.message.attributes"
        )

    publish_time: datetime | None = None
    raw_time = _first_str(message, "publishTime", "publish_time")
    if raw_time:
        try:
            publish_time = parse_rfc3339(raw_time)
        except ValueError as exc:
            raise EnvelopeError(str(exc), field="$.message.publishTime") from exc

    attempt = body.get("deliveryAttempt", body.get("delivery_attempt"))
    if attempt is not None and (
        isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0
    ):
        raise EnvelopeError(
            f"deliveryAttempt must be a non-negative integer, got {preview(attempt, 40)}",
            field="$.deliveryAttempt",
        )

    subscription = body.get("subscription")
    if subscription is not None and not isinstance(subscription, str):
        raise EnvelopeError("subscription must be a string", field="$.subscription")
    ordering_key = message.get("orderingKey", message.get("ordering_key"))
    if ordering_key is not None and not isinstance(ordering_key, str):
        raise EnvelopeError("orderingKey must be a string", field="$.message.orderingKey")

    return PushMessage(
        data=data,
        attributes=dict(attributes),
        message_id=message_id,
        publish_time=publish_time,
        delivery_attempt=attempt,
        subscription=subscription or None,
        ordering_key=ordering_key or None,
        trace_header=_trace_header(attributes, headers),
        encoding=encoding,
    )


def _first_str(mapping: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = mapping.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _trace_header(attributes: Mapping[str, str], headers: Mapping[str, str] | None) -> str | None:
    # The publisher's trace (OpenTelemetry puts it in an attribute) describes the message
    # better than the push request's own header, which starts a new trace per delivery.
    for name in _TRACE_ATTRIBUTES:
        if attributes.get(name):
            return attributes[name]
    if headers:
        lowered = {k.lower(): v for k, v in headers.items()}
        for name in ("traceparent", "x-cloud-trace-context"):
            if lowered.get(name):
                return lowered[name]
    return None
