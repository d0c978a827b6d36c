"""Poison messages typed with gcloud end in the dead-letter topic with their reason; a dead-letter
publish that fails is answered 5xx and the message is not lost."""

from __future__ import annotations

import google.cloud.pubsub_v1 as pubsub_v1
import pytest

from shared.pubsub_admin import apply_topology
from shared.topology import load_topology
from tests.support.core import emulator_environment
from tests.support.polling import wait_for
from tests.support.stack import PulledMessage, StackHandle

pytestmark = pytest.mark.e2e

DLQ_SUBS = ["dispatcher-due-dlq-sub", "dispatcher-maintenance-dlq-sub"]


@pytest.fixture(autouse=True)
def clean(stack: StackHandle) -> None:
    stack.drain(DLQ_SUBS)


def _letters(stack: StackHandle, subscription: str, data: bytes) -> list[PulledMessage]:
    return [m for m in stack.pull(subscription) if m.data == data]


def _decisions(stack: StackHandle, component: str, message_id: str) -> list[dict[str, object]]:
    return [
        line
        for line in stack.log_lines(component)
        if line.get("event_id") == message_id and "outcome" in line
    ]


def test_a_schema_invalid_message_lands_in_the_dlq_with_its_reason_and_one_log_line(
    stack: StackHandle,
) -> None:
    poison = '{"subscription_id": "Acme News"}'
    message_id = stack.gcloud_publish("dispatcher-due", poison, {"operator": "night-shift"})
    [letter] = wait_for(
        lambda: _letters(stack, "dispatcher-due-dlq-sub", poison.encode()),
        timeout=30,
        message="the dead letter",
    )
    attributes = letter.attributes
    assert attributes["operator"] == "night-shift", "original attributes are kept"
    assert attributes["dlq_reason_class"] == "SchemaValidationError"
    assert attributes["dlq_path"] == "$.subscription_id"
    assert attributes["dlq_rule"] == "pattern"
    assert attributes["dlq_source_topic"] == "dispatcher-due"
    assert attributes["dlq_source_message_id"] == message_id
    assert attributes["dlq_function"] == "fanout"
    assert attributes["dlq_failed_at"]
    decisions = wait_for(
        lambda: _decisions(stack, "fn-fanout", message_id), timeout=10, message="the log line"
    )
    assert len(decisions) == 1
    [line] = decisions
    assert line["severity"] == "ERROR" and line["outcome"] == "dead-lettered"
    assert line["error_rule"] == "pattern"


def test_a_failed_dead_letter_publish_is_retried_not_lost(stack: StackHandle) -> None:
    topology = load_topology()
    spec = topology.topic("dispatcher-maintenance")
    with emulator_environment(stack.env):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
    dlq_topic = f"projects/{stack.project}/topics/{spec.dead_letter.topic}"
    dlq_sub = f"projects/{stack.project}/subscriptions/{spec.dead_letter.subscription}"
    poison = b'{"job": "defragment-the-moon"}'
    try:
        publisher.delete_topic(request={"topic": dlq_topic})
        message_id = stack.gcloud_publish("dispatcher-maintenance", poison.decode())
        # The function cannot dead-letter it, so it answers 5xx and Pub/Sub redelivers.
        failed = wait_for(
            lambda: [
                d
                for d in _decisions(stack, "fn-maintenance", message_id)
                if d.get("outcome") == "retry" and d.get("publish_error")
            ],
            timeout=30,
            message="a failed dead-letter publish",
        )
        assert failed[0]["error_class"] == "SchemaValidationError"
    finally:
        # Restore the topology as topics.yaml declares it: the orphaned subscription first.
        subscriber.delete_subscription(request={"subscription": dlq_sub})
        with emulator_environment(stack.env):
            apply_topology(
                topology,
                stack.project,
                {},
                publisher=publisher,
                subscriber=subscriber,
                retry_override=topology.local_retry,
            )
    # A redelivery after the repair dead-letters it properly: nothing was lost.
    [letter] = wait_for(
        lambda: _letters(stack, spec.dead_letter.subscription, poison),
        timeout=60,
        message="the dead letter after the repair",
    )
    assert letter.attributes["dlq_reason_class"] == "SchemaValidationError"
    assert letter.attributes["dlq_source_message_id"] == message_id
