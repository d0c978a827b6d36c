"""Creating named HTTP Cloud Tasks; ALREADY_EXISTS is an answer, not a failure."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from shared.dal.records import TaskRequest
from shared.errors import RetryableError

if TYPE_CHECKING:
    from google.cloud import tasks_v2

__all__ = ["CloudTasksGateway", "CreateOutcome", "TaskCreateError"]

CALL_TIMEOUT_SECONDS: Final = 10.0
RETRY_BUDGET_SECONDS: Final = 15.0


class CreateOutcome(Enum):
    """What Cloud Tasks answered to a create."""

    CREATED = "created"
    # A task of that name exists or existed within about an hour: an earlier attempt landed.
    ALREADY_EXISTS = "already-exists"


class TaskCreateError(RetryableError):
    """Cloud Tasks did not accept the task (unavailable, timeout, refused)."""

    def __init__(self, task_name: str, message: str) -> None:
        super().__init__(f"creating {task_name}: {message}")
        self.task_name = task_name


class CloudTasksGateway:
    """Creates tasks through a Cloud Tasks client built on first use."""

    def __init__(
        self,
        client_factory: Callable[[], tasks_v2.CloudTasksClient],
        *,
        timeout: float = CALL_TIMEOUT_SECONDS,
        retry_budget: float = RETRY_BUDGET_SECONDS,
    ) -> None:
        self._client_factory = client_factory
        self._timeout = timeout
        self._retry_budget = retry_budget

    def create(self, request: TaskRequest) -> CreateOutcome:
        """Create the task; ALREADY_EXISTS means an earlier attempt did, and is success."""
        from google.protobuf import timestamp_pb2

        schedule = timestamp_pb2.Timestamp()
        schedule.FromDatetime(request.schedule_time)
        task: dict[str, Any] = {
            "name": request.name,
            "schedule_time": schedule,
            "http_request": {
                "http_method": "POST",
                "url": request.url,
                "headers": {"Content-Type": "application/json"},
                "body": request.body,
                "oidc_token": {
                    "service_account_email": request.service_account,
                    "audience": request.audience,
                },
            },
        }
        retry = gretry.Retry(
            predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded),
            initial=0.1,
            maximum=1.0,
            timeout=self._retry_budget,
        )
        try:
            self._client_factory().create_task(
                request={"parent": request.queue, "task": task},
                retry=retry,
                timeout=self._timeout,
            )
        except gexc.AlreadyExists:
            return CreateOutcome.ALREADY_EXISTS
        except (gexc.GoogleAPIError, ValueError) as exc:
            raise TaskCreateError(request.name, f"{type(exc).__name__}: {exc}") from exc
        return CreateOutcome.CREATED
