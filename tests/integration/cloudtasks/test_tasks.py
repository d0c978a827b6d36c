"""Task RPCs through the official client: create/get/list/delete/run, names, dedup, validation."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.protobuf import duration_pb2, timestamp_pb2

from emulators.cloudtasks import EmulatorHandle

pytestmark = pytest.mark.integration

QueueFactory = Callable[..., tasks_v2.Queue]
PARENT = "projects/test-project/locations/europe-west1"
FAR_URL = "http://127.0.0.1:9/never"  # queues holding these tasks stay paused


def _future(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))
    return stamp


@pytest.fixture
def paused_queue(client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory) -> str:
    queue = queue_factory()
    client.pause_queue(name=queue.name)
    return queue.name


def test_create_named_task_and_get_views(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    name = f"{paused_queue}/tasks/sub-1_slot-2_src-3"
    created = client.create_task(
        parent=paused_queue,
        task=tasks_v2.Task(
            {
                "name": name,
                "http_request": {
                    "url": FAR_URL,
                    "headers": {"Content-Type": "application/json"},
                    "body": b'{"a": 1}',
                },
            }
        ),
    )
    assert created.name == name
    assert created.view == tasks_v2.Task.View.BASIC
    assert created.http_request.body == b""
    assert created.http_request.http_method == tasks_v2.HttpMethod.POST
    assert created.create_time.timestamp() > 0
    assert created.schedule_time.timestamp() >= created.create_time.timestamp()
    assert created.dispatch_deadline.total_seconds() == 600
    assert created.dispatch_count == 0
    basic = client.get_task(name=name)
    assert basic.http_request.body == b""
    assert basic.http_request.headers["Content-Type"] == "application/json"
    full = client.get_task(request={"name": name, "response_view": tasks_v2.Task.View.FULL})
    assert full.view == tasks_v2.Task.View.FULL
    assert full.http_request.body == b'{"a": 1}'


def test_create_full_view_returns_body(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    created = client.create_task(
        request={
            "parent": paused_queue,
            "task": {"http_request": {"url": FAR_URL, "body": b"x"}},
            "response_view": tasks_v2.Task.View.FULL,
        }
    )
    assert created.http_request.body == b"x"


def test_generated_names_are_unique_valid_ids(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    names = {
        client.create_task(
            parent=paused_queue, task=tasks_v2.Task({"http_request": {"url": FAR_URL}})
        ).name
        for _ in range(20)
    }
    assert len(names) == 20
    for name in names:
        prefix, task_id = name.rsplit("/tasks/", 1)
        assert prefix == paused_queue
        assert task_id.replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize("task_id", ["has.dot", "has space", "a" * 501, "slash/inside", "ü"])
def test_invalid_task_ids_are_rejected(
    client: tasks_v2.CloudTasksClient, paused_queue: str, task_id: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_task(
            parent=paused_queue,
            task=tasks_v2.Task(
                {"name": f"{paused_queue}/tasks/{task_id}", "http_request": {"url": FAR_URL}}
            ),
        )


def test_task_id_of_500_characters_is_accepted(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    task_id = ("A_" + uuid.uuid4().hex + "-" * 500)[:500]
    created = client.create_task(
        parent=paused_queue,
        task=tasks_v2.Task(
            {"name": f"{paused_queue}/tasks/{task_id}", "http_request": {"url": FAR_URL}}
        ),
    )
    assert created.name.endswith(task_id)


def test_task_name_in_another_queue_is_rejected(
    client: tasks_v2.CloudTasksClient, paused_queue: str, queue_factory: QueueFactory
) -> None:
    other = queue_factory().name
    with pytest.raises(exceptions.InvalidArgument):
        client.create_task(
            parent=paused_queue,
            task=tasks_v2.Task({"name": f"{other}/tasks/t1", "http_request": {"url": FAR_URL}}),
        )


@pytest.mark.parametrize(
    "http_request",
    [
        {"url": "ftp://example.com/"},
        {"url": ""},
        {"url": "http://example.com/" + "a" * 2100},
        {"url": "http://example.com/", "http_method": tasks_v2.HttpMethod.GET, "body": b"x"},
        {"url": "http://example.com/", "oidc_token": {"audience": "a"}},
    ],
)
def test_invalid_http_requests_are_rejected(
    client: tasks_v2.CloudTasksClient, paused_queue: str, http_request: dict[str, Any]
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_task(parent=paused_queue, task=tasks_v2.Task({"http_request": http_request}))


def test_task_without_target_is_rejected(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_task(parent=paused_queue, task=tasks_v2.Task({}))


def test_schedule_time_more_than_30_days_ahead_is_rejected(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_task(
            parent=paused_queue,
            task=tasks_v2.Task(
                {"http_request": {"url": FAR_URL}, "schedule_time": _future(30 * 86400 + 60)}
            ),
        )
    accepted = client.create_task(
        parent=paused_queue,
        task=tasks_v2.Task(
            {"http_request": {"url": FAR_URL}, "schedule_time": _future(29 * 86400)}
        ),
    )
    assert accepted.schedule_time.timestamp() > dt.datetime.now(dt.UTC).timestamp() + 28 * 86400


def test_past_schedule_time_becomes_now(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    created = client.create_task(
        parent=paused_queue,
        task=tasks_v2.Task({"http_request": {"url": FAR_URL}, "schedule_time": _future(-3600)}),
    )
    assert abs(created.schedule_time.timestamp() - dt.datetime.now(dt.UTC).timestamp()) < 5


def test_dispatch_deadline_must_be_within_production_bounds(
    private_emulator: Callable[..., EmulatorHandle],
    client_for: Callable[[EmulatorHandle], tasks_v2.CloudTasksClient],
) -> None:
    client = client_for(private_emulator())  # production settings: [15 s, 30 min]
    queue = client.create_queue(
        parent=PARENT, queue=tasks_v2.Queue({"name": f"{PARENT}/queues/deadlines"})
    )
    for seconds in (14, 1801):
        with pytest.raises(exceptions.InvalidArgument):
            client.create_task(
                parent=queue.name,
                task=tasks_v2.Task(
                    {
                        "http_request": {"url": FAR_URL},
                        "dispatch_deadline": duration_pb2.Duration(seconds=seconds),
                    }
                ),
            )
    for seconds in (15, 1800):
        created = client.create_task(
            parent=queue.name,
            task=tasks_v2.Task(
                {
                    "http_request": {"url": FAR_URL},
                    "dispatch_deadline": duration_pb2.Duration(seconds=seconds),
                }
            ),
        )
        assert created.dispatch_deadline.total_seconds() == seconds


def test_list_tasks_pages_and_views(client: tasks_v2.CloudTasksClient, paused_queue: str) -> None:
    created = {
        client.create_task(
            parent=paused_queue,
            task=tasks_v2.Task({"http_request": {"url": FAR_URL, "body": b"payload"}}),
        ).name
        for _ in range(7)
    }
    first = client.list_tasks(request={"parent": paused_queue, "page_size": 3})
    assert len(first.tasks) == 3
    assert first.next_page_token
    basic = list(client.list_tasks(request={"parent": paused_queue, "page_size": 3}))
    assert {t.name for t in basic} == created
    assert len(basic) == 7
    assert all(t.http_request.body == b"" for t in basic)
    full = list(
        client.list_tasks(
            request={"parent": paused_queue, "response_view": tasks_v2.Task.View.FULL}
        )
    )
    assert all(t.http_request.body == b"payload" for t in full)


def test_delete_task_then_get_is_not_found(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    task = client.create_task(
        parent=paused_queue, task=tasks_v2.Task({"http_request": {"url": FAR_URL}})
    )
    client.delete_task(name=task.name)
    with pytest.raises(exceptions.NotFound):
        client.get_task(name=task.name)
    with pytest.raises(exceptions.NotFound):
        client.delete_task(name=task.name)
    assert list(client.list_tasks(parent=paused_queue)) == []


def test_duplicate_name_is_already_exists_also_after_delete(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    name = f"{paused_queue}/tasks/dedup"
    task = tasks_v2.Task({"name": name, "http_request": {"url": FAR_URL}})
    client.create_task(parent=paused_queue, task=task)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=paused_queue, task=task)
    client.delete_task(name=name)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=paused_queue, task=task)


def test_same_task_id_in_two_queues_is_independent(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    first, second = queue_factory().name, queue_factory().name
    for queue in (first, second):
        client.pause_queue(name=queue)
        client.create_task(
            parent=queue,
            task=tasks_v2.Task({"name": f"{queue}/tasks/same", "http_request": {"url": FAR_URL}}),
        )


def test_fifty_concurrent_creates_of_one_name_yield_exactly_one_task(
    client: tasks_v2.CloudTasksClient, paused_queue: str
) -> None:
    _race_fifty_creates(client, paused_queue)


def test_thread_pool_grpc_mode_also_yields_exactly_one_task(
    private_emulator: Callable[..., EmulatorHandle],
    client_for: Callable[[EmulatorHandle], tasks_v2.CloudTasksClient],
) -> None:
    client = client_for(private_emulator(grpc_asyncio=False, grpc_workers=8))
    queue = client.create_queue(
        parent=PARENT, queue=tasks_v2.Queue(name=f"{PARENT}/queues/threaded")
    )
    client.pause_queue(name=queue.name)
    _race_fifty_creates(client, queue.name)


def _race_fifty_creates(client: tasks_v2.CloudTasksClient, paused_queue: str) -> None:
    name = f"{paused_queue}/tasks/contended"
    barrier = threading.Barrier(50)
    outcomes: list[str] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        try:
            client.create_task(
                parent=paused_queue,
                task=tasks_v2.Task({"name": name, "http_request": {"url": FAR_URL}}),
            )
            outcome = "created"
        except exceptions.AlreadyExists:
            outcome = "exists"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=create) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert outcomes.count("created") == 1
    assert outcomes.count("exists") == 49
    assert [t.name for t in client.list_tasks(parent=paused_queue)] == [name]


def test_name_reuse_after_dispatch_follows_the_tombstone_window(
    private_emulator: Callable[..., EmulatorHandle],
    client_for: Callable[[EmulatorHandle], tasks_v2.CloudTasksClient],
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
) -> None:
    handle = private_emulator(tombstone_seconds=1.0)
    client = client_for(handle)
    queue = client.create_queue(
        parent=PARENT, queue=tasks_v2.Queue({"name": f"{PARENT}/queues/tombstones"})
    )
    name = f"{queue.name}/tasks/once"
    task = tasks_v2.Task({"name": name, "http_request": {"url": target.url("ok", bucket)}})
    client.create_task(parent=queue.name, task=task)
    poll(lambda: (handle.history(name) or {}).get("state") == "succeeded")
    with pytest.raises(exceptions.NotFound):
        client.get_task(name=name)
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=queue.name, task=task)

    def accepted() -> bool:
        try:
            client.create_task(parent=queue.name, task=task)
        except exceptions.AlreadyExists:
            return False
        return True

    poll(accepted, timeout=5.0, interval=0.05)
    poll(lambda: len(target.hits(bucket)) == 2)


def test_run_task_dispatches_now_even_when_paused(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
) -> None:
    queue = queue_factory()
    client.pause_queue(name=queue.name)
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task(
            {"http_request": {"url": target.url("ok", bucket)}, "schedule_time": _future(3600)}
        ),
    )
    ran = client.run_task(name=task.name)
    assert ran.dispatch_count == 1
    assert ran.first_attempt.dispatch_time.timestamp() > 0
    poll(lambda: target.hits(bucket))
    poll(lambda: not list(client.list_tasks(parent=queue.name)))
    with pytest.raises(exceptions.NotFound):
        client.run_task(name=task.name)


def test_run_task_failure_reschedules_with_backoff(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
) -> None:
    queue = queue_factory(retry_config={"min_backoff": duration_pb2.Duration(seconds=300)})
    client.pause_queue(name=queue.name)
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("status/500", bucket)}}),
    )
    started = dt.datetime.now(dt.UTC).timestamp()
    client.run_task(name=task.name)
    after = poll(lambda: (t := client.get_task(name=task.name)).response_count == 1 and t)
    assert after.dispatch_count == 1
    assert after.last_attempt.response_status.code == 13  # INTERNAL for HTTP 500
    assert after.schedule_time.timestamp() == pytest.approx(started + 300, abs=5)


def test_create_on_deleted_queue_is_not_found(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    client.delete_queue(name=queue.name)
    with pytest.raises(exceptions.NotFound):
        client.create_task(
            parent=queue.name, task=tasks_v2.Task({"http_request": {"url": FAR_URL}})
        )
