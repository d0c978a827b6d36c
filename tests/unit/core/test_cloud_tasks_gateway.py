"""CloudTasksGateway sorts Cloud Tasks answers by what a retry could change."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from shared.dal.cloud_tasks import CloudTasksGateway, CreateOutcome, TaskCreateError
from shared.dal.records import TaskRequest
from shared.errors import PermanentError, RetryableError, TaskRejectedError

QUEUE = "projects/p/locations/l/queues/collect-rss"
NAME = f"{QUEUE}/tasks/abc"


def _error(cls: type[gexc.GoogleAPICallError], message: str) -> Exception:
    return cls(message)


class _Client:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.calls = 0

    def create_task(self, **_: Any) -> None:
        self.calls += 1
        if self.error is not None:
            raise self.error


def _create(error: Exception | None) -> tuple[CreateOutcome, _Client]:
    client = _Client(error)
    gateway = CloudTasksGateway(lambda: client, timeout=1.0, retry_budget=0.5)  # type: ignore[arg-type,return-value]
    request = TaskRequest(
        name=NAME,
        queue=QUEUE,
        url="http://collector.test/collect",
        body=b"{}",
        schedule_time=datetime(2026, 1, 5, 9, tzinfo=UTC),
        service_account="c@p.iam.gserviceaccount.com",
        audience="http://collector.test/collect",
    )
    return gateway.create(request), client


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (_error(gexc.InvalidArgument, "schedule time too far ahead"), "INVALID_ARGUMENT"),
        (_error(gexc.NotFound, "queue does not exist"), "NOT_FOUND"),
        (_error(gexc.PermissionDenied, "cloudtasks.tasks.create denied"), "PERMISSION_DENIED"),
        (_error(gexc.FailedPrecondition, "queue is disabled"), "FAILED_PRECONDITION"),
    ],
)
def test_answers_no_retry_can_change_are_permanent_with_their_code(
    error: Exception, code: str
) -> None:
    with pytest.raises(TaskRejectedError) as caught:
        _create(error)
    rejected = caught.value
    assert isinstance(rejected, PermanentError) and not isinstance(rejected, RetryableError)
    assert (rejected.code, rejected.task_name, rejected.queue) == (code, NAME, QUEUE)
    assert rejected.details() == {"path": NAME, "rule": code, "value": QUEUE}
    assert code in rejected.message and str(error.args[0]) in rejected.message


@pytest.mark.parametrize(
    "error",
    [
        _error(gexc.InternalServerError, "boom"),
        _error(gexc.ResourceExhausted, "quota"),
        _error(gexc.Aborted, "race"),
    ],
)
def test_other_answers_stay_retryable(error: Exception) -> None:
    with pytest.raises(TaskCreateError) as caught:
        _create(error)
    assert isinstance(caught.value, RetryableError)


def test_already_exists_is_success() -> None:
    outcome, client = _create(_error(gexc.AlreadyExists, "exists"))
    assert outcome is CreateOutcome.ALREADY_EXISTS and client.calls == 1
    assert _create(None)[0] is CreateOutcome.CREATED
