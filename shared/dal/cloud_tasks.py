"""Creating named HTTP Cloud Tasks; ALREADY_EXISTS is an answer, not a failure.

Cloud Tasks answers are sorted by what a retry could change: ALREADY_EXISTS is success; the
codes in :data:`PERMANENT_CODES` can never succeed on a retry of the same request (a task
scheduled beyond 30 days, a queue that does not exist, a missing grant, a disabled queue) and
raise :class:`~shared.errors.TaskRejectedError` (permanent: the due message is dead-lettered
once with the reason); everything else (unavailable, deadline, internal, resource exhausted)
raises :class:`TaskCreateError` (retryable: Pub/Sub redelivers).

The creates go through the client's gRPC channel with a plain protobuf stub
(:class:`_CreateStub`), not the generated client's ``create_task``: the proto-plus request
wrapper, the method wrapper and the logging interceptor around each call cost about half of a
create's CPU in our process (profile in docs/profile-fanout.md). Same RPC, same metadata
(routing header, client info), same timeout and retry on UNAVAILABLE / DEADLINE_EXCEEDED, same
answers; a client without a gRPC channel (a test double) is still called through
``create_task``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, Final

import grpc
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry

from shared.clients import grpc_channel_of
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
# google-api-core's defaults for the Retry below: first delay, ceiling, multiplier.
_RETRY_INITIAL: Final = 0.1
_RETRY_MAXIMUM: Final = 1.0
_RETRY_MULTIPLIER: Final = 2.0
_TRANSIENT_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
)
_CREATE_METHOD: Final = "/google.cloud.tasks.v2.CloudTasks/CreateTask"


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
            initial=_RETRY_INITIAL,
            maximum=_RETRY_MAXIMUM,
            timeout=retry_budget,
        )
        self._stub_lock = threading.Lock()
        self._stub: _CreateStub | None = None
        self._stub_checked = False

    def create(self, request: TaskRequest) -> CreateOutcome:
        """Create the task; ALREADY_EXISTS means an earlier attempt did, and is success.

        Raises :class:`~shared.errors.TaskRejectedError` for an answer in
        :data:`PERMANENT_CODES`, :class:`TaskCreateError` for any other failure.
        """
        stub = self._create_stub()
        if stub is not None:
            return self._create_raw(stub, request)
        return self._create_with_client(request)

    def _create_stub(self) -> _CreateStub | None:
        """The plain stub on the client's channel, or ``None`` for a client without one."""
        if not self._stub_checked:
            with self._stub_lock:
                if not self._stub_checked:
                    channel = grpc_channel_of(self._client_factory())
                    if channel is not None:
                        self._stub = _CreateStub(channel)
                    self._stub_checked = True
        return self._stub

    def _create_raw(self, stub: _CreateStub, request: TaskRequest) -> CreateOutcome:
        try:
            message = stub.request(request)
        except (TypeError, ValueError) as exc:
            raise TaskCreateError(request.name, f"{type(exc).__name__}: {exc}") from exc
        metadata = stub.metadata(request.queue)
        deadline = time.monotonic() + self._retry_budget
        delay = _RETRY_INITIAL
        while True:
            remaining = deadline - time.monotonic()
            try:
                stub.call(
                    message, timeout=min(self._timeout, max(remaining, 0.001)), metadata=metadata
                )
            except grpc.RpcError as exc:
                code = exc.code() if isinstance(exc, grpc.Call) else None
                # The api-core Retry's schedule: a random sleep up to a doubling delay, retried
                # while the budget lasts.
                sleep = random.uniform(0.0, delay)
                if code in _TRANSIENT_CODES and time.monotonic() + sleep < deadline:
                    time.sleep(sleep)
                    delay = min(delay * _RETRY_MULTIPLIER, _RETRY_MAXIMUM)
                    continue
                if isinstance(exc, grpc.Call):
                    return _answer(request, gexc.from_grpc_error(exc))  # type: ignore[no-untyped-call]
                raise TaskCreateError(request.name, f"{type(exc).__name__}: {exc}") from exc
            return CreateOutcome.CREATED

    def _create_with_client(self, request: TaskRequest) -> CreateOutcome:
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
        except Exception as exc:
            return _answer(request, exc)
        return CreateOutcome.CREATED


def _answer(request: TaskRequest, exc: Exception) -> CreateOutcome:
    """Sort a failed create's exception: ALREADY_EXISTS is an answer, the rest raise."""
    if isinstance(exc, gexc.AlreadyExists):
        return CreateOutcome.ALREADY_EXISTS
    if isinstance(exc, gexc.GoogleAPICallError) and isinstance(exc, tuple(PERMANENT_CODES)):
        code = next(c for cls, c in PERMANENT_CODES.items() if isinstance(exc, cls))
        raise TaskRejectedError(request.name, code, str(exc.message)) from exc
    if isinstance(exc, (gexc.GoogleAPIError, ValueError)):
        raise TaskCreateError(request.name, f"{type(exc).__name__}: {exc}") from exc
    raise exc


class _CreateStub:
    """``CreateTask`` on a gRPC channel with plain protobuf messages (see the module doc)."""

    def __init__(self, channel: grpc.Channel) -> None:
        from google.cloud import tasks_v2
        from google.cloud.tasks_v2.services.cloud_tasks.transports.base import (
            DEFAULT_CLIENT_INFO,
        )

        self._request_pb: Any = tasks_v2.CreateTaskRequest.pb()
        self._task_pb: Any = tasks_v2.Task.pb()
        self._http_pb: Any = tasks_v2.HttpRequest.pb()
        self._oidc_pb: Any = tasks_v2.OidcToken.pb()
        self._post = int(tasks_v2.HttpMethod.POST)
        self.call = channel.unary_unary(
            _CREATE_METHOD,
            request_serializer=self._request_pb.SerializeToString,
            response_deserializer=None,  # the created task is not read: keep the bytes
        )
        self._client_info: tuple[str, str] = DEFAULT_CLIENT_INFO.to_grpc_metadata()  # type: ignore[no-untyped-call]
        self._metadata: dict[str, tuple[tuple[str, str], ...]] = {}

    def metadata(self, queue: str) -> tuple[tuple[str, str], ...]:
        """What the generated client sends: the routing header (the parent) and client info."""
        found = self._metadata.get(queue)
        if found is None:
            from google.api_core.gapic_v1 import routing_header

            routing: tuple[str, str] = routing_header.to_grpc_metadata(  # type: ignore[no-untyped-call]
                (("parent", queue),)
            )
            found = (routing, self._client_info)
            self._metadata[queue] = found
        return found

    def request(self, request: TaskRequest) -> Any:
        """The ``CreateTaskRequest`` protobuf of one task."""
        from google.protobuf import timestamp_pb2

        schedule = timestamp_pb2.Timestamp()
        schedule.FromDatetime(request.schedule_time)
        return self._request_pb(
            parent=request.queue,
            task=self._task_pb(
                name=request.name,
                schedule_time=schedule,
                http_request=self._http_pb(
                    http_method=self._post,
                    url=request.url,
                    headers={"Content-Type": "application/json"},
                    body=request.body,
                    oidc_token=self._oidc_pb(
                        service_account_email=request.service_account,
                        audience=request.audience,
                    ),
                ),
            ),
        )
