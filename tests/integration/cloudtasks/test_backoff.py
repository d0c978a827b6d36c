"""The retry schedule and give-up rule, checked against production's documented examples."""

from __future__ import annotations

import pytest

from emulators.cloudtasks import RetryPolicy


def test_documented_example_doubles_then_grows_linearly_then_caps() -> None:
    # Production docs: min 10 s, max 300 s, 3 doublings -> 10, 20, 40, 80, 160, 240, 300, 300.
    policy = RetryPolicy(min_backoff=10, max_backoff=300, max_doublings=3)
    assert [policy.backoff(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


def test_defaults_match_production() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.min_backoff, policy.max_backoff, policy.max_doublings) == (
        100,
        0.1,
        3600.0,
        16,
    )
    assert policy.backoff(1) == pytest.approx(0.1)
    assert policy.backoff(16) == pytest.approx(0.1 * 2**15)
    assert policy.backoff(17) == 3600.0


def test_one_doubling_then_linear_steps_of_the_doubled_interval() -> None:
    policy = RetryPolicy(min_backoff=1, max_backoff=100, max_doublings=1)
    assert [policy.backoff(n) for n in range(1, 6)] == [1, 2, 4, 6, 8]


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().backoff(0)


def test_max_attempts_alone_stops() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert not policy.gives_up(2, since_first_attempt=1e6)
    assert policy.gives_up(3, since_first_attempt=0.0)


def test_attempts_and_duration_must_both_be_exhausted() -> None:
    policy = RetryPolicy(max_attempts=3, max_retry_duration=10.0)
    assert not policy.gives_up(5, since_first_attempt=9.0)
    assert not policy.gives_up(2, since_first_attempt=11.0)
    assert policy.gives_up(3, since_first_attempt=10.0)


def test_unlimited_attempts() -> None:
    assert not RetryPolicy(max_attempts=-1).gives_up(10_000, since_first_attempt=1e9)
    limited = RetryPolicy(max_attempts=-1, max_retry_duration=5.0)
    assert not limited.gives_up(10_000, since_first_attempt=4.9)
    assert limited.gives_up(2, since_first_attempt=5.0)
