"""The scheduling-core harness on the session stack, with clean state for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import field_mask_pb2

from shared.tasks_admin import apply_queues
from tests.integration.core.harness import Core
from tests.support.core import emulator_environment
from tests.support.stack import StackHandle

# The acceptance runs push thousands of tasks; production's per-kind rates (5-50/s) would make
# the collector oracle wait minutes. Raised for this module, restored from app.toml afterwards.
_FAST_RATE = 500.0


@pytest.fixture(scope="module")
def core(stack: StackHandle) -> Iterator[Core]:
    with emulator_environment(stack.env):
        # The Google clients read the emulator hosts from the environment when they are built.
        harness = Core(stack)
    for queue in harness.settings.queues.values():
        harness.tasks_client.update_queue(
            request={
                "queue": {
                    "name": harness.settings.queue_path(queue.kind),
                    "rate_limits": {
                        "max_dispatches_per_second": _FAST_RATE,
                        "max_concurrent_dispatches": 200,
                    },
                },
                "update_mask": field_mask_pb2.FieldMask(
                    paths=[
                        "rate_limits.max_dispatches_per_second",
                        "rate_limits.max_concurrent_dispatches",
                    ]
                ),
            }
        )
    try:
        yield harness
    finally:
        apply_queues(harness.settings, harness.tasks_client)
        harness.close()


@pytest.fixture(autouse=True)
def clean(core: Core, stack: StackHandle) -> Iterator[None]:
    """Empty Firestore, ledger, collector, due/dead-letter subscriptions before each test."""
    stack.wipe_firestore()
    stack.wipe_ledger()
    stack.clear_collector()
    core.drain_due()
    stack.drain(["dispatcher-due-dlq-sub", "dispatcher-ticks-dlq-sub"])
    core.store.reset()
    yield
