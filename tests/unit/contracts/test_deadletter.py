"""Dead letters: original bytes and attributes kept, reason attributes within Pub/Sub's limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.contracts import get_contract
from shared.deadletter import (
    MAX_ATTRIBUTES,
    PubSubDeadLetterPublisher,
    build_dead_letter,
)
from shared.errors import JsonDecodeError, SchemaValidationError, shorten

FIXED = datetime(2026, 1, 5, 9, 0, 1, 250000, tzinfo=UTC)


def _letter(error: Any, attributes: dict[str, str] | None = None, **kwargs: Any) -> Any:
    return build_dead_letter(
        error=error,
        source_topic="dispatcher-due",
        dead_letter_topic="dispatcher-due-dlq",
        function="fanout",
        data=b"\xff raw",
        attributes=attributes or {"origin": "cli"},
        message_id="42",
        now=lambda: FIXED,
        **kwargs,
    )


def _schema_error() -> SchemaValidationError:
    with pytest.raises(SchemaValidationError) as caught:
        get_contract("due").validate({"subscription_id": "Acme News"})
    return caught.value


def test_reason_attributes_and_original_kept() -> None:
    letter = _letter(
        _schema_error(),
        subscription="projects/p/subscriptions/s",
        publish_time="2026-01-05T09:00:00Z",
        delivery_attempt=2,
    )
    assert letter.topic == "dispatcher-due-dlq"
    assert letter.data == b"\xff raw"
    attrs = letter.attributes
    assert attrs["origin"] == "cli"
    assert attrs["dlq_reason_class"] == "SchemaValidationError"
    assert attrs["dlq_path"] == "$.subscription_id"
    assert attrs["dlq_rule"] == "pattern"
    assert attrs["dlq_schema_path"].startswith("due.v1.json#/")
    assert attrs["dlq_value"] == "'Acme News'"
    assert attrs["dlq_source_topic"] == "dispatcher-due"
    assert attrs["dlq_source_message_id"] == "42"
    assert attrs["dlq_source_subscription"] == "projects/p/subscriptions/s"
    assert attrs["dlq_delivery_attempt"] == "2"
    assert attrs["dlq_failed_at"] == "2026-01-05T09:00:01.250000Z"
    assert attrs["dlq_function"] == "fanout"
    assert attrs["dlq_data"] == "message-data"
    # The dead letter satisfies its own contract.
    envelope = {"attributes": dict(attrs)}
    assert get_contract("dead-letter").issues(envelope) == []


def test_stale_reasons_of_a_replayed_dead_letter_are_replaced() -> None:
    old = {"origin": "cli", "dlq_reason_class": "Old", "dlq_rule": "old-rule"}
    attrs = _letter(JsonDecodeError("data is not JSON"), attributes=old).attributes
    assert attrs["dlq_reason_class"] == "JsonDecodeError"
    assert "dlq_rule" not in attrs


def test_long_values_are_cut_to_1024_bytes_on_a_character_boundary() -> None:
    attrs = _letter(JsonDecodeError("é" * 5000)).attributes
    reason = attrs["dlq_reason"]
    assert len(reason.encode("utf-8")) <= 1024
    assert reason.endswith("…")
    reason.encode("utf-8").decode("utf-8")


@pytest.mark.parametrize("originals", [90, 94, 98])
def test_attribute_count_stays_within_pubsub_limit(originals: int) -> None:
    many = {f"k{i}": "v" for i in range(originals)}
    letter = _letter(_schema_error(), attributes=many, subscription="s", delivery_attempt=1)
    attrs = letter.attributes
    assert len(attrs) == MAX_ATTRIBUTES
    assert all(k in attrs for k in many), "original attributes are never dropped"
    assert "dlq_reason_class" in attrs and "dlq_reason" in attrs
    if originals <= 94:
        assert get_contract("dead-letter").issues({"attributes": dict(attrs)}) == []


@pytest.mark.parametrize(("text", "limit"), [("abc", 3), ("abcd", 3), ("ééé", 4), ("x", 0)])
def test_shorten(text: str, limit: int) -> None:
    out = shorten(text, limit)
    assert len(out.encode("utf-8")) <= limit
    assert text.startswith(out.rstrip("…"))


class _Future:
    def __init__(self, value: str | None, error: Exception | None = None) -> None:
        self.value, self.error = value, error
        self.timeouts: list[float | None] = []

    def result(self, timeout: float | None = None) -> str:
        self.timeouts.append(timeout)
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class _Client:
    def __init__(self, future: _Future) -> None:
        self.future = future
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []
        self.gapic: list[dict[str, Any]] = []

    def publish(self, topic: str, data: bytes, **attrs: str) -> _Future:
        self.calls.append((topic, data, attrs))
        return self.future

    def _gapic_publish(self, **kwargs: Any) -> Any:
        self.gapic.append(kwargs)

        class _Response:
            message_ids = ["g-1"]

        return _Response()


def test_default_publisher_waits_on_the_future_with_a_timeout() -> None:
    future = _Future("m-9")
    fake = _Client(future)
    publisher = PubSubDeadLetterPublisher(project="p", timeout_seconds=7.5, client=fake)
    assert publisher.publish("t-dlq", b"x", {"a": "b"}) == "m-9"
    assert fake.calls == [("projects/p/topics/t-dlq", b"x", {"a": "b"})]
    assert future.timeouts == [7.5]


def test_default_publisher_raises_when_the_publish_fails() -> None:
    fake = _Client(_Future(None, TimeoutError("deadline")))
    publisher = PubSubDeadLetterPublisher(project="p", timeout_seconds=1, client=fake)
    with pytest.raises(TimeoutError):
        publisher.publish("t-dlq", b"x", {})


def test_attribute_named_like_a_publish_parameter_goes_through_gapic() -> None:
    fake = _Client(_Future("unused"))
    publisher = PubSubDeadLetterPublisher(project="p", timeout_seconds=3, client=fake)
    assert publisher.publish("t-dlq", b"x", {"timeout": "30", "a": "b"}) == "g-1"
    assert fake.calls == []
    [call] = fake.gapic
    assert call["topic"] == "projects/p/topics/t-dlq"
    assert call["messages"] == [{"data": b"x", "attributes": {"timeout": "30", "a": "b"}}]
    assert call["timeout"] == 3
