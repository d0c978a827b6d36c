"""The envelope layer: raw push bodies, CloudEvents, data decoding."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cloudevents.http import CloudEvent

from shared.envelope import (
    decode_base64,
    decode_json,
    from_cloud_event,
    parse_http_request,
    parse_push_body,
    parse_rfc3339,
)
from shared.errors import (
    Base64DecodeError,
    EnvelopeError,
    JsonDecodeError,
    NotUtf8Error,
    PayloadDecodeError,
    PermanentError,
)
from tests.unit.contracts.conftest import load_event, push_body

DUE = b'{"subscription_id": "acme-news"}'


def test_real_pubsub_push_body() -> None:
    message = parse_push_body(json.dumps(load_event("push", "pubsub-push.json")).encode())
    assert message.data == DUE
    assert message.message_id == "2070443601311540"
    assert message.delivery_attempt == 3
    assert message.subscription == "projects/dispatcher-local/subscriptions/dispatcher-due-fanout"
    assert message.subscription_short == "dispatcher-due-fanout"
    assert message.ordering_key == "acme-news"
    assert message.attributes["origin"] == "scheduler"
    # Nanoseconds are truncated to microseconds, never rounded into the next second.
    assert message.publish_time == datetime(2026, 1, 5, 9, 0, 0, 123456, tzinfo=UTC)
    assert message.trace_header is not None and message.trace_header.startswith("00-0af7")


def test_emulator_push_body_has_no_delivery_attempt() -> None:
    message = parse_push_body(load_event("push", "emulator-push.json"))
    assert message.delivery_attempt is None
    assert message.message_id == "7"
    assert message.publish_time == datetime(2026, 1, 5, 9, 0, 0, 500000, tzinfo=UTC)


def test_snake_case_only_body_is_understood() -> None:
    body = {"message": {"data": "e30=", "message_id": "5", "publish_time": "2026-01-05T09:00:00Z"}}
    message = parse_push_body(body)
    assert (message.message_id, message.data, message.subscription) == ("5", b"{}", None)


def test_attributes_only_message_has_empty_data() -> None:
    message = parse_push_body(load_event("push", "attributes-only-push.json"))
    assert message.data == b""
    assert message.attributes == {"subscription_id": "acme-news"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "$"),
        (b"[1, 2]", "$"),
        ({"subscription": "s"}, "$.message"),
        ({"message": "text"}, "$.message"),
        ({"message": {"data": "e30="}}, "$.message.messageId"),
        ({"message": {"data": "e30=", "messageId": 7}}, "$.message.messageId"),
        ({"message": {"data": 5, "messageId": "1"}}, "$.message.data"),
        (
            {"message": {"data": "e30=", "messageId": "1", "attributes": {"a": 1}}},
            "$.message.attributes",
        ),
        ({"message": {"data": "e30=", "messageId": "1", "attributes": []}}, "$.message.attributes"),
        (
            {"message": {"data": "e30=", "messageId": "1", "publishTime": "noon"}},
            "$.message.publishTime",
        ),
        (
            {"message": {"data": "e30=", "messageId": "1"}, "deliveryAttempt": "3"},
            "$.deliveryAttempt",
        ),
        (
            {"message": {"data": "e30=", "messageId": "1"}, "deliveryAttempt": True},
            "$.deliveryAttempt",
        ),
        (
            {"message": {"data": "e30=", "messageId": "1"}, "deliveryAttempt": -1},
            "$.deliveryAttempt",
        ),
        ({"message": {"data": "e30=", "messageId": "1"}, "subscription": 3}, "$.subscription"),
    ],
)
def test_malformed_envelopes_are_permanent_envelope_errors(body: Any, field: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        parse_push_body(body)
    assert caught.value.field == field
    assert isinstance(caught.value, PermanentError)


def test_bad_base64_is_a_permanent_decode_error() -> None:
    with pytest.raises(Base64DecodeError) as caught:
        parse_push_body(load_event("push", "bad-base64-push.json"))
    assert isinstance(caught.value, PermanentError)
    assert "eyJzdWJz!!" in caught.value.message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("e30=", b"{}"),
        ("e30", b"{}"),  # proto3 JSON allows missing padding
        ("-_8=", b"\xfb\xff"),  # and the URL-safe alphabet
        ("+/8=", b"\xfb\xff"),
        ("", b""),
    ],
)
def test_base64_variants(text: str, expected: bytes) -> None:
    assert decode_base64(text) == expected


@pytest.mark.parametrize("text", ["!!!!", "e30=e30=x", "a", "e3 0=", "e30=\x00"])
def test_base64_garbage(text: str) -> None:
    with pytest.raises(Base64DecodeError):
        decode_base64(text)


def test_cloud_event_made_by_functions_framework_from_a_push() -> None:
    # What event_conversion.background_event_to_cloud_event produces for a raw push request:
    # the message moves under data.message, its id and time become the CloudEvent's own.
    event = CloudEvent(
        {
            "id": "99",
            "time": "2026-01-05T09:00:00.250Z",
            "type": "google.cloud.pubsub.topic.v1.messagePublished",
            "source": "//pubsub.googleapis.com/",
            "specversion": "1.0",
        },
        {
            "message": {
                "@type": "type.googleapis.com/google.pubsub.v1.PubsubMessage",
                "data": base64.b64encode(DUE).decode(),
                "attributes": {"k": "v"},
            }
        },
    )
    message = from_cloud_event(event)
    assert (message.message_id, message.data, message.encoding) == ("99", DUE, "cloudevent")
    assert message.publish_time == datetime(2026, 1, 5, 9, 0, 0, 250000, tzinfo=UTC)
    assert message.subscription is None and message.delivery_attempt is None


def test_cloud_event_gets_subscription_back_from_the_raw_body() -> None:
    raw = push_body(DUE, message_id="42", delivery_attempt=2)
    event = CloudEvent(
        {"id": "42", "type": "t", "source": "//pubsub.googleapis.com/", "specversion": "1.0"},
        {"message": {"data": raw["message"]["data"], "messageId": "42"}},
    )
    message = from_cloud_event(event, raw_body=raw)
    assert message.subscription == raw["subscription"]
    assert message.delivery_attempt == 2
    # A raw body describing another message is ignored.
    other = push_body(DUE, message_id="43", delivery_attempt=9)
    assert from_cloud_event(event, raw_body=other).delivery_attempt is None


def test_cloud_event_with_non_pubsub_data() -> None:
    event = CloudEvent({"id": "1", "type": "t", "source": "s", "specversion": "1.0"}, [1, 2])
    with pytest.raises(EnvelopeError):
        from_cloud_event(event)


def test_binary_cloud_event_over_http() -> None:
    body = json.dumps({"message": {"data": "e30=", "messageId": "77"}, "subscription": "x"})
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "77",
        "ce-type": "google.cloud.pubsub.topic.v1.messagePublished",
        "ce-source": "//pubsub.googleapis.com/projects/p/topics/t",
        "Content-Type": "application/json",
    }
    message = parse_http_request(headers, body.encode())
    assert (message.message_id, message.data, message.subscription) == ("77", b"{}", "x")


def test_broken_binary_cloud_event_is_an_envelope_error() -> None:
    with pytest.raises(EnvelopeError):
        parse_http_request({"ce-specversion": "1.0"}, b"{}")


def test_trace_header_from_http_header_when_no_attribute() -> None:
    header = "105445aa7843bc8bf206b12000100000/1;o=1"
    message = parse_http_request(
        {"X-Cloud-Trace-Context": header}, json.dumps(push_body(b"{}")).encode()
    )
    assert message.trace_header == header


def test_decode_json_accepts_an_object() -> None:
    assert decode_json(DUE) == {"subscription_id": "acme-news"}


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\xff{}", NotUtf8Error),
        (b'{"a": "\xc3"}', NotUtf8Error),
        (b"", JsonDecodeError),
        (b"  \n", JsonDecodeError),
        (b"{", JsonDecodeError),
        (b"{'a': 1}", JsonDecodeError),
        (b'{"a": NaN}', JsonDecodeError),
        (b"Infinity", JsonDecodeError),
        (b"[" * 100_000, JsonDecodeError),
        ("\ufeff{}".encode(), JsonDecodeError),
    ],
)
def test_decode_json_rejects(data: bytes, error: type[PayloadDecodeError]) -> None:
    with pytest.raises(error) as caught:
        decode_json(data)
    assert isinstance(caught.value, PermanentError)


def test_not_utf8_error_names_the_byte() -> None:
    with pytest.raises(NotUtf8Error) as caught:
        decode_json(b'{"a": "\xff"}')
    assert caught.value.details() == {"path": "byte 7"}
    assert isinstance(caught.value.__cause__, UnicodeDecodeError)


def test_json_error_names_line_and_column() -> None:
    with pytest.raises(JsonDecodeError) as caught:
        decode_json(b'{\n  "a": }')
    assert (caught.value.line, caught.value.column) == (2, 8)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-05T09:00:00Z", datetime(2026, 1, 5, 9, tzinfo=UTC)),
        ("2026-01-05t09:00:00.1z", datetime(2026, 1, 5, 9, 0, 0, 100000, tzinfo=UTC)),
        (
            "2026-01-05T09:00:00.999999999+05:30",
            datetime(2026, 1, 5, 9, 0, 0, 999999, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    assert parse_rfc3339(text) == expected


@pytest.mark.parametrize(
    "text", ["2026-01-05", "2026-01-05T09:00:60Z", "2026-13-01T00:00:00Z", "2026-01-05T09:00:00"]
)
def test_parse_rfc3339_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)
