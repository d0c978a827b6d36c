"""A message its function keeps failing (5xx) is redelivered, then dead-lettered by Pub/Sub.

Runs on a stack of its own: Firestore is stopped for the test, which would disturb the shared one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from emulators.stack import LocalStack, StackOptions, stop_recorded
from shared.topology import load_topology
from tests.support.polling import wait_for
from tests.support.stack import PulledMessage, StackHandle

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    state_dir = tmp_path_factory.mktemp("redelivery-stack")
    # A dependency outage fails each delivery within ~2 s instead of production's 20 s budget,
    # so five deliveries fit in a test.
    budgets = {
        "DISPATCHER_DEPENDENCY_TIMEOUT_SECONDS": "1",
        "DISPATCHER_DEPENDENCY_RETRY_BUDGET_SECONDS": "2",
    }
    local = LocalStack(StackOptions(state_dir=state_dir, scheduler=False, function_env=budgets))
    env = local.up()
    try:
        yield StackHandle(local, env)
    finally:
        stop_recorded(state_dir)


def test_select_failing_with_5xx_is_dead_lettered_after_max_delivery_attempts(
    own_stack: StackHandle,
) -> None:
    spec = load_topology().topic("dispatcher-ticks")
    own_stack.stack.stop_component("firestore")  # select's due query now fails: retryable, 5xx
    started = time.monotonic()
    message_id = own_stack.gcloud_publish(
        "dispatcher-ticks", '{"time": "2026-01-05T09:00:00Z"}', {"origin": "redelivery-test"}
    )

    def dead_letters() -> list[PulledMessage]:
        return [
            m
            for m in own_stack.pull(spec.dead_letter.subscription)
            if m.attributes.get("origin") == "redelivery-test"
        ]

    [letter] = wait_for(dead_letters, timeout=240, interval=1.0, message="the dead letter")
    elapsed = time.monotonic() - started
    attempts = spec.push.max_delivery_attempts
    assert letter.data == b'{"time": "2026-01-05T09:00:00Z"}'
    assert letter.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == str(attempts)
    assert letter.attributes["CloudPubSubDeadLetterSourceSubscription"] == spec.push.subscription
    # Every delivery reached select and was answered with a retry (5xx), one log line each.
    retries = [
        line
        for line in own_stack.log_lines("fn-select")
        if line.get("event_id") == message_id and line.get("outcome") == "retry"
    ]
    assert len(retries) == attempts
    print(f"dead-lettered after {attempts} deliveries in {elapsed:.1f}s")
