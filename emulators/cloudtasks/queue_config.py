"""Queue defaults, limits and the retry backoff schedule, as production documents them.

Defaults when a field is unspecified (zero) at create or update time:
max_dispatches_per_second 500 (maximum 500), max_concurrent_dispatches 1000 (maximum 5000),
max_attempts 100 (-1 = unlimited), min_backoff 0.1 s, max_backoff 3600 s, max_doublings 16,
max_retry_duration 0 (unlimited).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from google.cloud.tasks_v2.types import queue as queue_types

from emulators.cloudtasks.errors import invalid

QueuePb: Any = queue_types.Queue.pb()
RetryConfigPb: Any = queue_types.RetryConfig.pb()

DEFAULT_MAX_DISPATCHES_PER_SECOND = 500.0
MAX_DISPATCHES_PER_SECOND = 500.0
DEFAULT_MAX_CONCURRENT_DISPATCHES = 1000
MAX_CONCURRENT_DISPATCHES = 5000
DEFAULT_MAX_ATTEMPTS = 100
DEFAULT_MIN_BACKOFF = 0.1
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_MAX_DOUBLINGS = 16

STATE_RUNNING = 1
STATE_PAUSED = 2


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A resolved RetryConfig (durations in seconds; ``max_attempts == -1`` is unlimited)."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_retry_duration: float = 0.0
    min_backoff: float = DEFAULT_MIN_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    max_doublings: int = DEFAULT_MAX_DOUBLINGS

    def backoff(self, retry: int) -> float:
        """Delay before retry number ``retry`` (1 = the first retry, after the first failure).

        The interval starts at min_backoff and doubles max_doublings times; afterwards it grows
        linearly by the last doubled interval, and it never exceeds max_backoff. The production
        example: min 10 s, max 300 s, 3 doublings gives 10, 20, 40, 80, 160, 240, 300, 300, ...
        """
        if retry < 1:
            raise ValueError("retry numbers start at 1")
        doublings = min(retry - 1, self.max_doublings)
        interval = self.min_backoff * (2.0**doublings)
        linear_steps = max(0, retry - 1 - self.max_doublings)
        interval = interval * (1 + linear_steps)
        return min(interval, self.max_backoff)

    def gives_up(self, attempts: int, since_first_attempt: float) -> bool:
        """True when no further attempt may be made after ``attempts`` failed ones.

        Production: "Once max_retry_duration time has passed *and* the task has been attempted
        max_attempts times, no further attempts will be made." A zero max_retry_duration means
        the age is unlimited (only attempts count); unlimited attempts (-1) with a positive
        max_retry_duration leave the duration as the only limit; -1 with 0 retries forever.
        """
        if self.max_attempts == -1:
            attempts_done = self.max_retry_duration > 0
        else:
            attempts_done = attempts >= self.max_attempts
        duration_done = (
            self.max_retry_duration <= 0 or since_first_attempt >= self.max_retry_duration
        )
        return attempts_done and duration_done


def duration_seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def set_duration(duration: Any, seconds: float) -> None:
    whole = math.floor(seconds)
    duration.seconds = int(whole)
    duration.nanos = round((seconds - whole) * 1e9)


def retry_policy(config: Any) -> RetryPolicy:
    """Resolve a (normalized) RetryConfig message into a policy."""
    return RetryPolicy(
        max_attempts=int(config.max_attempts),
        max_retry_duration=duration_seconds(config.max_retry_duration),
        min_backoff=duration_seconds(config.min_backoff),
        max_backoff=duration_seconds(config.max_backoff),
        max_doublings=int(config.max_doublings),
    )


def burst_size(max_dispatches_per_second: float) -> int:
    """Output-only max_burst_size derived from the rate.

    Production picks it itself and documents it as "generally at least equal to
    max_dispatches_per_second"; the emulator uses exactly that lower bound (at least 1).
    """
    return max(1, math.ceil(max_dispatches_per_second))


def normalize_retry_config(config: Any) -> None:
    """Fill defaults for unspecified retry fields and validate ranges, in place."""
    if config.max_attempts < -1:
        raise invalid("retry_config.max_attempts must be -1 (unlimited) or positive")
    if config.max_attempts == 0:
        config.max_attempts = DEFAULT_MAX_ATTEMPTS
    for field in ("max_retry_duration", "min_backoff", "max_backoff"):
        if duration_seconds(getattr(config, field)) < 0:
            raise invalid(f"retry_config.{field} must not be negative")
    if not config.HasField("min_backoff") or duration_seconds(config.min_backoff) == 0:
        set_duration(config.min_backoff, DEFAULT_MIN_BACKOFF)
    if not config.HasField("max_backoff") or duration_seconds(config.max_backoff) == 0:
        set_duration(config.max_backoff, DEFAULT_MAX_BACKOFF)
    if not config.HasField("max_retry_duration"):
        set_duration(config.max_retry_duration, 0.0)
    if config.max_doublings < 0:
        raise invalid("retry_config.max_doublings must not be negative")
    if config.max_doublings == 0:
        config.max_doublings = DEFAULT_MAX_DOUBLINGS
    if duration_seconds(config.min_backoff) > duration_seconds(config.max_backoff):
        raise invalid("retry_config.min_backoff must not exceed retry_config.max_backoff")


def normalize_queue(queue: Any) -> None:
    """Fill defaults for unspecified rate and retry fields and validate limits, in place."""
    rate = queue.rate_limits
    if math.isnan(rate.max_dispatches_per_second) or rate.max_dispatches_per_second < 0:
        raise invalid("rate_limits.max_dispatches_per_second must be positive")
    if rate.max_dispatches_per_second > MAX_DISPATCHES_PER_SECOND:
        raise invalid(
            "rate_limits.max_dispatches_per_second must be at most "
            f"{MAX_DISPATCHES_PER_SECOND:g}, got {rate.max_dispatches_per_second:g}"
        )
    if rate.max_dispatches_per_second == 0:
        rate.max_dispatches_per_second = DEFAULT_MAX_DISPATCHES_PER_SECOND
    if rate.max_concurrent_dispatches < 0:
        raise invalid("rate_limits.max_concurrent_dispatches must be positive")
    if rate.max_concurrent_dispatches > MAX_CONCURRENT_DISPATCHES:
        raise invalid(
            f"rate_limits.max_concurrent_dispatches must be at most {MAX_CONCURRENT_DISPATCHES}, "
            f"got {rate.max_concurrent_dispatches}"
        )
    if rate.max_concurrent_dispatches == 0:
        rate.max_concurrent_dispatches = DEFAULT_MAX_CONCURRENT_DISPATCHES
    rate.max_burst_size = burst_size(rate.max_dispatches_per_second)
    normalize_retry_config(queue.retry_config)
    sampling = queue.stackdriver_logging_config.sampling_ratio
    if not 0.0 <= sampling <= 1.0:
        raise invalid("stackdriver_logging_config.sampling_ratio must be in [0, 1]")


# Field-mask paths UpdateQueue accepts; output-only fields (name, state, purge_time,
# rate_limits.max_burst_size) are not updatable.
UPDATABLE_QUEUE_PATHS = frozenset(
    {
        "app_engine_routing_override",
        "http_target",
        "rate_limits",
        "rate_limits.max_dispatches_per_second",
        "rate_limits.max_concurrent_dispatches",
        "retry_config",
        "retry_config.max_attempts",
        "retry_config.max_retry_duration",
        "retry_config.min_backoff",
        "retry_config.max_backoff",
        "retry_config.max_doublings",
        "stackdriver_logging_config",
        "stackdriver_logging_config.sampling_ratio",
    }
)
