"""Dead-letter replay: attribute hygiene, filters, and ack only after a successful republish."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from shared.ops.deadletters import (
    DeadLetterError,
    DeadLetterMessage,
    DeadLetterQueues,
    Filter,
    parse_filters,
    resolve_topics,
)
from shared.topology import load_topology

TOPOLOGY = load_topology()
DUE = TOPOLOGY.topic("dispatcher-due")

REJECTED = {
    "origin": "manual",
    "dlq_reason_class": "UnknownSubscriptionError",
    "dlq_reason": "subscription 'ghost' does not exist",
    "dlq_source_topic": "dispatcher-due",
    "dlq_source_message_id": "41",
    "dlq_failed_at": "2026-01-05T09:00:00Z",
    "dlq_function": "fanout",
}
EXHAUSTED = {
    "replay_count": "1",
    "CloudPubSubDeadLetterSourceDeliveryCount": "10",
    "CloudPubSubDeadLetterSourceSubscription": "dispatcher-due-fanout",
}


def letter(
    message_id: str, attributes: Mapping[str, str], data: bytes = b"{}"
) -> DeadLetterMessage:
    return DeadLetterMessage(DUE, message_id, f"ack-{message_id}", data, dict(attributes))


def test_replay_attributes_strip_both_families_and_count_replays() -> None:
    ours = letter("7", REJECTED).replay_attributes()
    theirs = letter("8", EXHAUSTED).replay_attributes()
    assert ours == {"origin": "manual", "replay_count": "1", "replayed_from": "7"}
    assert theirs == {"replay_count": "2", "replayed_from": "8"}
    assert letter("8", EXHAUSTED).source_topic == "dispatcher-due"
    assert letter("8", EXHAUSTED).reason_class == "DeliveryAttemptsExhausted"


def test_filters() -> None:
    data = b'{"subscription_id": "ghost"}'
    item = letter("7", REJECTED, data)
    assert Filter.parse("reason=UnknownSubscriptionError").matches(item)
    assert Filter.parse("subscription_id=ghost").matches(item)
    assert Filter.parse("origin~reject").matches(item)
    assert not Filter.parse("reason!=UnknownSubscriptionError").matches(item)
    assert Filter.parse("data~a=b").value == "a=b"  # the first operator splits
    assert not Filter.parse("nothere=x").matches(item)
    with pytest.raises(DeadLetterError):
        parse_filters(["no-operator"])


def test_resolve_topics_accepts_every_name_of_a_topic() -> None:
    names = ["dispatcher-due", "dispatcher-due-dlq", "dispatcher-due-dlq-sub"]
    assert [t.name for t in resolve_topics(TOPOLOGY, names)] == ["dispatcher-due"]
    assert len(resolve_topics(TOPOLOGY, None)) == len(TOPOLOGY.topics)
    with pytest.raises(DeadLetterError, match="unknown topic"):
        resolve_topics(TOPOLOGY, ["nope"])


@dataclass
class FakeSubscriber:
    """Holds messages like a pull subscription: leased ones are invisible until released."""

    messages: dict[str, tuple[bytes, dict[str, str]]]
    leased: set[str] = field(default_factory=set)
    acked: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def pull(self, request: dict[str, Any], timeout: float) -> Any:
        free = [m for m in self.messages if m not in self.leased][: request["max_messages"]]
        self.leased.update(free)
        return SimpleNamespace(
            received_messages=[
                SimpleNamespace(
                    ack_id=f"ack-{m}",
                    delivery_attempt=0,
                    message=SimpleNamespace(
                        message_id=m,
                        data=self.messages[m][0],
                        attributes=self.messages[m][1],
                        publish_time=None,
                    ),
                )
                for m in free
            ]
        )

    def acknowledge(self, request: dict[str, Any]) -> None:
        for ack_id in request["ack_ids"]:
            message_id = ack_id.removeprefix("ack-")
            self.events.append(f"ack {message_id}")
            self.acked.append(message_id)
            del self.messages[message_id]
            self.leased.discard(message_id)

    def modify_ack_deadline(self, request: dict[str, Any]) -> None:
        if request["ack_deadline_seconds"] == 0:
            for ack_id in request["ack_ids"]:
                self.leased.discard(ack_id.removeprefix("ack-"))


@dataclass
class FakePublisher:
    subscriber: FakeSubscriber
    fail_for: set[bytes] = field(default_factory=set)
    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)

    def publish(self, topic: str, data: bytes, attributes: Mapping[str, str]) -> str:
        self.subscriber.events.append(f"publish {data.decode()}")
        if data in self.fail_for:
            raise RuntimeError("NotFound: topic gone")
        self.published.append((topic, data, dict(attributes)))
        return f"new-{len(self.published)}"


def make(
    messages: dict[str, tuple[bytes, dict[str, str]]],
) -> tuple[FakeSubscriber, FakePublisher, DeadLetterQueues]:
    subscriber = FakeSubscriber(messages)
    publisher = FakePublisher(subscriber)
    queues = DeadLetterQueues(
        subscriber=subscriber, publisher=publisher, project="p", topology=TOPOLOGY
    )
    return subscriber, publisher, queues


def test_peek_consumes_nothing() -> None:
    subscriber, _, queues = make({"1": (b"{}", REJECTED), "2": (b"{}", EXHAUSTED)})
    assert [m.message_id for m in queues.peek([DUE])] == ["1", "2"]
    assert [m.message_id for m in queues.peek([DUE], limit=1)] == ["1"]
    assert subscriber.acked == [] and subscriber.leased == set()


def test_replay_acks_only_after_publish_and_keeps_failures() -> None:
    push_body = {**REJECTED, "dlq_data": "push-body"}
    subscriber, publisher, queues = make(
        {
            "1": (b'{"subscription_id":"a"}', REJECTED),
            "2": (b'{"subscription_id":"b"}', EXHAUSTED),
            "3": (b"broken", push_body),
            "4": (b'{"subscription_id":"c"}', REJECTED),
        }
    )
    publisher.fail_for = {b'{"subscription_id":"c"}'}
    report = queues.replay([DUE])
    assert report.counts() == {"replayed": 2, "skipped": 1, "failed": 1, "purged": 0}
    assert sorted(subscriber.messages) == ["3", "4"]  # skipped and failed stay
    assert subscriber.leased == set()  # ... and are released, not held
    # Each ack follows its own successful publish; the failed one is never acked.
    assert subscriber.events.index('publish {"subscription_id":"a"}') < subscriber.events.index(
        "ack 1"
    )
    assert "ack 4" not in subscriber.events
    assert publisher.published[0] == (
        "dispatcher-due",
        b'{"subscription_id":"a"}',
        {"origin": "manual", "replay_count": "1", "replayed_from": "1"},
    )


def test_replay_filter_and_dry_run_touch_nothing_else() -> None:
    subscriber, publisher, queues = make(
        {"1": (b'{"subscription_id":"a"}', REJECTED), "2": (b'{"subscription_id":"b"}', REJECTED)}
    )
    dry = queues.replay([DUE], dry_run=True)
    assert dry.counts()["replayed"] == 2 and publisher.published == []
    assert sorted(subscriber.messages) == ["1", "2"]
    report = queues.replay([DUE], filters=parse_filters(["subscription_id=b"]))
    assert [r["message_id"] for r in report.replayed] == ["2"]
    assert sorted(subscriber.messages) == ["1"]


def test_purge() -> None:
    subscriber, _, queues = make({"1": (b"{}", REJECTED), "2": (b"{}", EXHAUSTED)})
    assert queues.purge([DUE], dry_run=True).counts()["purged"] == 2
    assert len(subscriber.messages) == 2
    queues.purge([DUE], filters=parse_filters(["origin=retries-exhausted"]))
    assert sorted(subscriber.messages) == ["1"]
