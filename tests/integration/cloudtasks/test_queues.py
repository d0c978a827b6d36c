"""Queue RPCs through the official client: CRUD, paging, masks, pause/resume/purge, limits."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.protobuf import duration_pb2, field_mask_pb2

from emulators.cloudtasks import EmulatorHandle

PARENT = "projects/test-project/locations/europe-west1"

pytestmark = pytest.mark.integration

QueueFactory = Callable[..., tasks_v2.Queue]


def test_create_applies_production_defaults(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    assert queue.state == tasks_v2.Queue.State.RUNNING
    assert queue.rate_limits.max_dispatches_per_second == 500
    assert queue.rate_limits.max_concurrent_dispatches == 1000
    assert queue.rate_limits.max_burst_size >= 500
    retry = queue.retry_config
    assert retry.max_attempts == 100
    assert retry.min_backoff.total_seconds() == pytest.approx(0.1)
    assert retry.max_backoff.total_seconds() == 3600
    assert retry.max_doublings == 16
    assert client.get_queue(name=queue.name) == queue


def test_create_keeps_given_settings(queue_factory: QueueFactory) -> None:
    queue = queue_factory(
        rate_limits={"max_dispatches_per_second": 20, "max_concurrent_dispatches": 7},
        retry_config={
            "max_attempts": -1,
            "min_backoff": duration_pb2.Duration(seconds=2),
            "max_backoff": duration_pb2.Duration(seconds=30),
            "max_doublings": 3,
            "max_retry_duration": duration_pb2.Duration(seconds=600),
        },
    )
    assert queue.rate_limits.max_dispatches_per_second == 20
    assert queue.rate_limits.max_burst_size >= 20
    assert queue.rate_limits.max_concurrent_dispatches == 7
    assert queue.retry_config.max_attempts == -1
    assert queue.retry_config.min_backoff.total_seconds() == 2
    assert queue.retry_config.max_backoff.total_seconds() == 30
    assert queue.retry_config.max_retry_duration.total_seconds() == 600


def test_duplicate_queue_is_already_exists(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    with pytest.raises(exceptions.AlreadyExists):
        client.create_queue(parent=PARENT, queue=tasks_v2.Queue({"name": queue.name}))


def test_missing_queue_is_not_found(client: tasks_v2.CloudTasksClient) -> None:
    missing = f"{PARENT}/queues/missing-{uuid.uuid4().hex}"
    with pytest.raises(exceptions.NotFound):
        client.get_queue(name=missing)
    with pytest.raises(exceptions.NotFound):
        client.pause_queue(name=missing)
    with pytest.raises(exceptions.NotFound):
        client.delete_queue(name=missing)
    with pytest.raises(exceptions.NotFound):
        client.create_task(
            parent=missing, task=tasks_v2.Task({"http_request": {"url": "http://x/"}})
        )


@pytest.mark.parametrize(
    "queue_id",
    ["under_score", "a" * 101, "dot.ted", ""],
)
def test_invalid_queue_ids_are_rejected(client: tasks_v2.CloudTasksClient, queue_id: str) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        client.create_queue(
            parent=PARENT, queue=tasks_v2.Queue({"name": f"{PARENT}/queues/{queue_id}"})
        )


def test_queue_id_of_100_characters_is_accepted(client: tasks_v2.CloudTasksClient) -> None:
    queue_id = ("L" + uuid.uuid4().hex + "x" * 100)[:100]
    queue = client.create_queue(
        parent=PARENT, queue=tasks_v2.Queue({"name": f"{PARENT}/queues/{queue_id}"})
    )
    assert queue.name.endswith(queue_id)


def test_queue_outside_parent_is_rejected(client: tasks_v2.CloudTasksClient) -> None:
    other = f"projects/other/locations/us-east1/queues/q-{uuid.uuid4().hex[:8]}"
    with pytest.raises(exceptions.InvalidArgument):
        client.create_queue(parent=PARENT, queue=tasks_v2.Queue({"name": other}))


@pytest.mark.parametrize(
    "rate_limits",
    [
        {"max_dispatches_per_second": 501},
        {"max_dispatches_per_second": -1},
        {"max_concurrent_dispatches": 5001},
    ],
)
def test_rate_limits_above_production_maximum_are_rejected(
    queue_factory: QueueFactory, rate_limits: dict[str, float]
) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        queue_factory(rate_limits=rate_limits)


def test_min_backoff_above_max_backoff_is_rejected(queue_factory: QueueFactory) -> None:
    with pytest.raises(exceptions.InvalidArgument):
        queue_factory(
            retry_config={
                "min_backoff": duration_pb2.Duration(seconds=10),
                "max_backoff": duration_pb2.Duration(seconds=5),
            }
        )


def test_list_queues_pages_through_all(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    created = {queue_factory().name for _ in range(7)}
    first = client.list_queues(request={"parent": PARENT, "page_size": 3})
    assert len(first.queues) == 3
    assert first.next_page_token
    listed = {q.name for q in client.list_queues(request={"parent": PARENT, "page_size": 3})}
    assert created <= listed
    names = [q.name for q in client.list_queues(request={"parent": PARENT, "page_size": 2})]
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_list_queues_filters_by_state(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    paused = queue_factory()
    running = queue_factory()
    client.pause_queue(name=paused.name)
    names = {
        q.name for q in client.list_queues(request={"parent": PARENT, "filter": "state: PAUSED"})
    }
    assert paused.name in names
    assert running.name not in names
    with pytest.raises(exceptions.InvalidArgument):
        client.list_queues(request={"parent": PARENT, "filter": "name: x"})


def test_list_queues_of_another_location_is_empty(client: tasks_v2.CloudTasksClient) -> None:
    other = f"projects/empty-{uuid.uuid4().hex[:8]}/locations/us-east1"
    assert list(client.list_queues(parent=other)) == []


def test_update_with_mask_changes_only_masked_fields(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory(
        rate_limits={"max_dispatches_per_second": 10, "max_concurrent_dispatches": 5}
    )
    update = tasks_v2.Queue(
        name=queue.name,
        rate_limits={"max_dispatches_per_second": 42, "max_concurrent_dispatches": 99},
        retry_config={"max_attempts": 3},
    )
    updated = client.update_queue(
        queue=update,
        update_mask=field_mask_pb2.FieldMask(paths=["rate_limits.max_dispatches_per_second"]),
    )
    assert updated.rate_limits.max_dispatches_per_second == 42
    assert updated.rate_limits.max_burst_size >= 42
    assert updated.rate_limits.max_concurrent_dispatches == 5
    assert updated.retry_config.max_attempts == 100
    assert client.get_queue(name=queue.name) == updated


def test_update_of_whole_message_field(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    updated = client.update_queue(
        queue=tasks_v2.Queue({"name": queue.name, "retry_config": {"max_attempts": 5}}),
        update_mask=field_mask_pb2.FieldMask(paths=["retry_config"]),
    )
    assert updated.retry_config.max_attempts == 5
    assert updated.retry_config.min_backoff.total_seconds() == pytest.approx(0.1)


def test_update_rejects_output_only_and_invalid_values(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    with pytest.raises(exceptions.InvalidArgument):
        client.update_queue(
            queue=tasks_v2.Queue({"name": queue.name, "state": tasks_v2.Queue.State.PAUSED}),
            update_mask=field_mask_pb2.FieldMask(paths=["state"]),
        )
    with pytest.raises(exceptions.InvalidArgument):
        client.update_queue(
            queue=tasks_v2.Queue(
                {"name": queue.name, "rate_limits": {"max_dispatches_per_second": 1000}}
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["rate_limits"]),
        )
    assert client.get_queue(name=queue.name).rate_limits.max_dispatches_per_second == 500


def test_update_creates_a_missing_queue(client: tasks_v2.CloudTasksClient) -> None:
    name = f"{PARENT}/queues/by-update-{uuid.uuid4().hex[:8]}"
    created = client.update_queue(
        queue=tasks_v2.Queue({"name": name, "rate_limits": {"max_dispatches_per_second": 3}})
    )
    assert created.state == tasks_v2.Queue.State.RUNNING
    assert client.get_queue(name=name).rate_limits.max_dispatches_per_second == 3


def test_pause_and_resume_change_state(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    assert client.pause_queue(name=queue.name).state == tasks_v2.Queue.State.PAUSED
    assert client.get_queue(name=queue.name).state == tasks_v2.Queue.State.PAUSED
    assert client.resume_queue(name=queue.name).state == tasks_v2.Queue.State.RUNNING


def test_purge_drops_tasks_and_sets_purge_time(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    client.pause_queue(name=queue.name)
    for _ in range(5):
        client.create_task(
            parent=queue.name, task=tasks_v2.Task({"http_request": {"url": "http://x.invalid/"}})
        )
    assert len(list(client.list_tasks(parent=queue.name))) == 5
    purged = client.purge_queue(name=queue.name)
    assert purged.purge_time.timestamp() > 0
    assert list(client.list_tasks(parent=queue.name)) == []


def test_deleted_queue_name_cannot_be_reused_within_the_window(
    client: tasks_v2.CloudTasksClient, queue_factory: QueueFactory
) -> None:
    queue = queue_factory()
    client.delete_queue(name=queue.name)
    with pytest.raises(exceptions.NotFound):
        client.get_queue(name=queue.name)
    with pytest.raises(exceptions.FailedPrecondition):
        client.create_queue(parent=PARENT, queue=tasks_v2.Queue({"name": queue.name}))


def test_deleted_queue_name_is_free_after_a_short_configured_window(
    private_emulator: Callable[..., EmulatorHandle],
    client_for: Callable[[EmulatorHandle], tasks_v2.CloudTasksClient],
    poll: Callable[..., object],
) -> None:
    client = client_for(private_emulator(queue_tombstone_seconds=0.3))
    name = f"{PARENT}/queues/reused"
    client.create_queue(parent=PARENT, queue=tasks_v2.Queue({"name": name}))
    client.delete_queue(name=name)
    with pytest.raises(exceptions.FailedPrecondition):
        client.create_queue(parent=PARENT, queue=tasks_v2.Queue({"name": name}))

    def recreate() -> bool:
        try:
            client.create_queue(parent=PARENT, queue=tasks_v2.Queue({"name": name}))
        except exceptions.FailedPrecondition:
            return False
        return True

    poll(recreate, timeout=5.0, interval=0.05)
