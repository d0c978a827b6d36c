"""The ``X-CloudTasks-*`` headers Cloud Tasks sets on every HTTP task request.

Cloud Tasks strips any header of that family a task creator set, so on a request whose OIDC
token verified they are Cloud Tasks' own word. A request that did not come through Cloud Tasks
(a developer's curl) has none; the defaults make it attempt 1 of an unnamed task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

__all__ = ["MAX_ATTEMPT", "TaskHeaders"]

#: The result contract caps ``attempt`` here; a larger retry count is reported as this.
MAX_ATTEMPT: Final = 1_000_000

_TASK_NAME: Final = "x-cloudtasks-taskname"
_QUEUE_NAME: Final = "x-cloudtasks-queuename"
_RETRY_COUNT: Final = "x-cloudtasks-taskretrycount"
_EXECUTION_COUNT: Final = "x-cloudtasks-taskexecutioncount"
_ETA: Final = "x-cloudtasks-tasketa"
_PREVIOUS_RESPONSE: Final = "x-cloudtasks-taskpreviousresponse"


@dataclass(frozen=True)
class TaskHeaders:
    """What Cloud Tasks says about this execution of the task.

    ``retry_count`` counts earlier dispatch attempts (0 on the first), ``execution_count`` the
    earlier attempts that got an answer from us, ``eta`` is the task's schedule time and
    ``previous_response`` the HTTP status the previous attempt answered.
    """

    task_name: str | None = None
    queue_name: str | None = None
    retry_count: int = 0
    execution_count: int | None = None
    eta: datetime | None = None
    previous_response: int | None = None

    @property
    def attempt(self) -> int:
        """Which attempt this is, from 1 (retry count + 1), as the result contract counts."""
        return min(self.retry_count + 1, MAX_ATTEMPT)

    @classmethod
    def from_mapping(cls, headers: Mapping[str, str]) -> TaskHeaders:
        """Parse the headers (any case). Malformed values read as absent, never as an error:
        they are informational, and refusing a task over them would only make it retry."""
        lowered = {k.lower(): v for k, v in headers.items()}
        retry = _non_negative_int(lowered.get(_RETRY_COUNT))
        return cls(
            task_name=(lowered.get(_TASK_NAME) or "").strip() or None,
            queue_name=(lowered.get(_QUEUE_NAME) or "").strip() or None,
            retry_count=retry if retry is not None else 0,
            execution_count=_non_negative_int(lowered.get(_EXECUTION_COUNT)),
            eta=_epoch_seconds(lowered.get(_ETA)),
            previous_response=_non_negative_int(lowered.get(_PREVIOUS_RESPONSE)),
        )


def _non_negative_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


def _epoch_seconds(text: str | None) -> datetime | None:
    # Cloud Tasks sends the ETA as seconds since the epoch with a fraction ("1767603600.125").
    if text is None:
        return None
    try:
        return datetime.fromtimestamp(float(text.strip()), UTC)
    except (ValueError, OverflowError, OSError):
        return None
