"""Creating named HTTP Cloud Tasks; ALREADY_EXISTS is an answer, not a failure.

Cloud Tasks answers are sorted by what a retry could change: ALREADY_EXISTS is success; the
codes in :data:`PERMANENT_CODES` can never succeed on a retry of the same request (a task
scheduled beyond 30 days, a queue that does not exist, a missing grant, a disabled queue) and
raise :class:`~shared.errors.TaskRejectedError` (permanent: the due message is dead-lettered
once with the reason); everything else (unavailable, deadline, internal, resource exhausted)
raises :class:`TaskCreateError` (retryable: Pub/Sub redelivers).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from shared.dal.records import TaskRequest
from shared.errors import RetryableError, TaskRejectedError

if TYPE_CHECKING:
    from google.cloud import tasks_v2

__all__ = ["PERMANENT_CODES", "CloudTasksGateway", "CreateOutcome", "TaskCreateError"]

#: Exception classes of answers that no retry can change, with their gRPC code names.
PERMANENT_CODES: Final[dict[type[gexc.GoogleAPICallError], str]] = {
    gexc.InvalidArgument: "INVALID_ARGUMENT",
    gexc.NotFound: "NOT_FOUND",
    gexc.PermissionDenied: "PERMISSION_DENIED",
    gexc.FailedPrecondition: "FAILED_PRECONDITION",
}

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
        # One policy object for every create (it holds settings only, no per-call state).
        self._retry = gretry.Retry(
            predicate=gretry.if_exception_type(gexc.ServiceUnavailable, gexc.DeadlineExceeded),
            initial=0.1,
            maximum=1.0,
            timeout=retry_budget,
        )

    def create(self, request: TaskRequest) -> CreateOutcome:
        """Create the task; ALREADY_EXISTS means an earlier attempt did, and is success.

        Raises :class:`~shared.errors.TaskRejectedError` for an answer in
        :data:`PERMANENT_CODES`, :class:`TaskCreateError` for any other failure.
        """
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
        try:
            self._client_factory().create_task(
                request={"parent": request.queue, "task": task},
                retry=self._retry,
                timeout=self._timeout,
            )
        except gexc.AlreadyExists:
            return CreateOutcome.ALREADY_EXISTS
        except tuple(PERMANENT_CODES) as exc:
            code = next(c for cls, c in PERMANENT_CODES.items() if isinstance(exc, cls))
            raise TaskRejectedError(request.name, code, str(exc.message)) from exc
        except (gexc.GoogleAPIError, ValueError) as exc:
            raise TaskCreateError(request.name, f"{type(exc).__name__}: {exc}") from exc
        return CreateOutcome.CREATED
