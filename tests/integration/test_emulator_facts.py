"""Facts about the local emulators that the benchmarks' explanations rest on, checked live.

If an emulator upgrade changes one of them, this fails and the README's benchmark section (which
quotes it) must be revisited.
"""

from __future__ import annotations

import pytest

from bench.cpu import emulator_push_rate
from tests.support.stack import StackHandle

pytestmark = pytest.mark.integration


def test_the_pubsub_emulator_keeps_exactly_two_pushes_in_flight_per_subscription(
    stack: StackHandle,
) -> None:
    # An endpoint that takes 50 ms would be pushed to 2 at a time (the emulator's two push
    # loops), so about 40 messages a second, however many are waiting.
    result = emulator_push_rate(stack.env, messages=120, latency=0.05, timeout=60)

    assert result["delivered"] == 120, result
    assert result["max_in_flight"] == 2, result
    assert result["messages_per_second"] < 2 / 0.05 * 1.1, result
