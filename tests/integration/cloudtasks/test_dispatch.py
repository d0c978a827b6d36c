"""Dispatch behaviour: HTTP request shape, retries and backoff, rate and concurrency limits,
pause/resume/purge, schedule_time, deadlines, and the counters on the task."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from google.cloud import tasks_v2
from google.protobuf import duration_pb2, timestamp_pb2

from emulators.cloudtasks import EmulatorHandle, RetryPolicy

pytestmark = pytest.mark.integration

QueueFactory = Callable[..., tasks_v2.Queue]
Poll = Callable[..., Any]
# Dispatch latency the emulator is allowed on top of an exact schedule (2-core CI machine).
LATE = 0.08
EARLY = 0.005


def _seconds(value: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(value * 1e9))
    return duration


def _future(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))
    return stamp


def _history(emulator: EmulatorHandle, name: str) -> dict[str, Any]:
    history = emulator.history(name)
    assert history is not None, f"emulator does not know {name}"
    return history


def test_request_carries_method_headers_body_and_cloud_tasks_headers(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
) -> None:
    queue = queue_factory()
    queue_id = queue.name.rsplit("/", 1)[1]
    name = f"{queue.name}/tasks/headers-1"
    created = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task(
            {
                "name": name,
                "http_request": {
                    "url": target.url("ok", bucket, query="a=1&b=2"),
                    "http_method": tasks_v2.HttpMethod.PUT,
                    "headers": {
                        "Content-Type": "application/json",
                        "X-Custom": "yes",
                        "User-Agent": "overridden",
                        "X-Google-Internal": "dropped",
                    },
                    "body": b'{"k": "v"}',
                },
            }
        ),
    )
    (hit,) = poll(lambda: target.hits(bucket))
    assert hit.method == "PUT"
    assert hit.path.endswith("?a=1&b=2")
    assert hit.body == b'{"k": "v"}'
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Custom"] == "yes"
    assert hit.headers["User-Agent"] == "Google-Cloud-Tasks"
    assert "X-Google-Internal" not in hit.headers
    assert hit.headers["X-CloudTasks-QueueName"] == queue_id
    assert hit.headers["X-CloudTasks-TaskName"] == "headers-1"
    assert hit.headers["X-CloudTasks-TaskRetryCount"] == "0"
    assert hit.headers["X-CloudTasks-TaskExecutionCount"] == "0"
    assert float(hit.headers["X-CloudTasks-TaskETA"]) == pytest.approx(
        created.schedule_time.timestamp(), abs=1e-3
    )


def test_retry_headers_count_previous_attempts(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    queue = queue_factory(
        retry_config={"min_backoff": _seconds(0.02), "max_backoff": _seconds(0.05)}
    )
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("fail-first/2", bucket)}}),
    )
    hits = poll(lambda: len(target.hits(bucket)) == 3 and target.hits(bucket))
    assert [h.headers["X-CloudTasks-TaskRetryCount"] for h in hits] == ["0", "1", "2"]
    # Production's execution count leaves out 5xx answers: they never reached "execution".
    assert [h.headers["X-CloudTasks-TaskExecutionCount"] for h in hits] == ["0", "0", "0"]
    assert "X-CloudTasks-TaskPreviousResponse" not in hits[0].headers
    assert hits[1].headers["X-CloudTasks-TaskPreviousResponse"] == "500"
    poll(lambda: _history(emulator, task.name)["state"] == "succeeded")
    statuses = [a["http_status"] for a in _history(emulator, task.name)["attempts"]]
    assert statuses == [500, 500, 200]

    other_bucket = target.new_bucket()
    client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("fail-first-4xx/2", other_bucket)}}),
    )
    hits = poll(lambda: len(target.hits(other_bucket)) == 3 and target.hits(other_bucket))
    assert [h.headers["X-CloudTasks-TaskRetryCount"] for h in hits] == ["0", "1", "2"]
    assert [h.headers["X-CloudTasks-TaskExecutionCount"] for h in hits] == ["0", "1", "2"]
    assert hits[2].headers["X-CloudTasks-TaskPreviousResponse"] == "409"


def test_retry_intervals_follow_backoff_and_max_attempts_stops(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    policy = RetryPolicy(max_attempts=7, min_backoff=0.04, max_backoff=0.3, max_doublings=2)
    queue = queue_factory(
        retry_config={
            "max_attempts": policy.max_attempts,
            "min_backoff": _seconds(policy.min_backoff),
            "max_backoff": _seconds(policy.max_backoff),
            "max_doublings": policy.max_doublings,
        }
    )
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("status/503", bucket)}}),
    )
    history = poll(
        lambda: (h := _history(emulator, task.name))["state"] == "gave_up" and h, timeout=10
    )
    attempts = history["attempts"]
    assert len(attempts) == 7
    assert len(target.hits(bucket)) == 7
    gaps = [
        later["dispatch_time"] - earlier["response_time"]
        for earlier, later in itertools.pairwise(attempts)
    ]
    # 0.04 doubled twice (0.04, 0.08, 0.16), then +0.16 per retry (0.32) capped at 0.3.
    expected = [0.04, 0.08, 0.16, 0.3, 0.3, 0.3]
    assert [policy.backoff(n) for n in range(1, 7)] == pytest.approx(expected)
    for gap, want in zip(gaps, expected, strict=True):
        assert want - EARLY <= gap <= want + LATE, (gaps, expected)


def test_max_retry_duration_keeps_retrying_past_max_attempts_until_it_elapses(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    queue = queue_factory(
        retry_config={
            "max_attempts": 2,
            "max_retry_duration": _seconds(0.6),
            "min_backoff": _seconds(0.1),
            "max_backoff": _seconds(0.1),
        }
    )
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("status/500", bucket)}}),
    )
    history = poll(lambda: (h := _history(emulator, task.name))["state"] == "gave_up" and h)
    attempts = history["attempts"]
    assert len(attempts) > 2
    span = attempts[-1]["response_time"] - attempts[0]["dispatch_time"]
    assert span >= 0.6
    assert attempts[-2]["response_time"] - attempts[0]["dispatch_time"] < 0.6


def test_task_level_retry_config_overrides_the_queue(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    queue = queue_factory(retry_config={"max_attempts": 50, "min_backoff": _seconds(0.01)})
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task(
            {
                "http_request": {"url": target.url("status/500", bucket)},
                "retry_config": {"max_attempts": 2, "min_backoff": _seconds(0.01)},
            }
        ),
    )
    history = poll(lambda: (h := _history(emulator, task.name))["state"] == "gave_up" and h)
    assert len(history["attempts"]) == 2


def test_dispatch_deadline_times_out_and_retries(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    queue = queue_factory(
        retry_config={"max_attempts": 2, "min_backoff": _seconds(0.05)},
    )
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task(
            {
                "http_request": {"url": target.url("sleep/1500", bucket)},
                "dispatch_deadline": _seconds(0.3),
            }
        ),
    )
    first = poll(
        lambda: (t := client.get_task(name=task.name)).last_attempt.response_status.code and t
    )
    assert first.last_attempt.response_status.code == 4  # DEADLINE_EXCEEDED
    assert first.response_count == 0
    history = poll(lambda: (h := _history(emulator, task.name))["state"] == "gave_up" and h)
    for attempt in history["attempts"]:
        assert attempt["http_status"] is None
        assert attempt["error"] == "deadline exceeded"
    assert len(history["attempts"]) == 2


def test_counters_and_attempts_on_a_failing_task(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
) -> None:
    queue = queue_factory(retry_config={"min_backoff": _seconds(0.05), "max_backoff": _seconds(60)})
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("status/404", bucket)}}),
    )
    # Attempts 1 and 2 fail 0.05 s apart; the third comes only 0.1 s after the second.
    seen = poll(lambda: (t := client.get_task(name=task.name)).response_count >= 2 and t)
    assert seen.dispatch_count >= 2
    assert seen.first_attempt.dispatch_time.timestamp() > 0
    # Production keeps only dispatch_time of the first attempt.
    assert not tasks_v2.Attempt.pb(seen.first_attempt).HasField("response_time")
    assert (
        seen.last_attempt.dispatch_time.timestamp() > seen.first_attempt.dispatch_time.timestamp()
    )
    assert seen.last_attempt.response_status.code == 5  # NOT_FOUND for HTTP 404
    assert "404" in seen.last_attempt.response_status.message
    client.delete_task(name=task.name)


def test_schedule_time_is_honoured(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
) -> None:
    queue = queue_factory()
    created = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task(
            {"http_request": {"url": target.url("ok", bucket)}, "schedule_time": _future(0.5)}
        ),
    )
    (hit,) = poll(lambda: target.hits(bucket))
    due = created.schedule_time.timestamp()
    assert due - EARLY <= hit.time <= due + LATE


def _slope(times: list[float]) -> float:
    """Dispatches per second fitted by least squares through (receive time, index).

    The target stamps receive times, which a thread stall on a loaded machine shifts by tens of
    milliseconds; two endpoints carry that error whole, a fit over every point averages it out.
    """
    n = len(times)
    mean_t = sum(times) / n
    mean_i = (n - 1) / 2
    covariance = sum((t - mean_t) * (i - mean_i) for i, t in enumerate(times))
    variance = sum((t - mean_t) ** 2 for t in times)
    return covariance / variance


@pytest.mark.parametrize(("rate", "count"), [(20.0, 60), (200.0, 800)])
def test_dispatch_rate_matches_max_dispatches_per_second(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    rate: float,
    count: int,
) -> None:
    queue = queue_factory(rate_limits={"max_dispatches_per_second": rate})
    burst = queue.rate_limits.max_burst_size
    assert count > burst + rate  # at least a second of token-limited dispatch to measure
    client.pause_queue(name=queue.name)
    url = target.url("ok", bucket)
    for _ in range(count):
        client.create_task(parent=queue.name, task=tasks_v2.Task({"http_request": {"url": url}}))
    client.resume_queue(name=queue.name)
    hits = poll(lambda: len(target.hits(bucket)) == count and target.hits(bucket), timeout=30)
    times = sorted(h.time for h in hits)
    # A full bucket lets `burst` tasks go at once; every later dispatch waits for a token, so
    # the tail of the run proceeds at exactly the refill rate.
    tail = (count - burst) // 2
    steady = _slope(times[-tail:])
    assert steady == pytest.approx(rate, rel=0.10)
    # Over the whole run the bucket never allows more than burst + rate * elapsed. (No lower
    # bound here: on a starved CI machine delivering the initial burst itself can lag.)
    whole = (count - burst) / (times[-1] - times[0])
    assert whole <= rate * 1.10


def test_never_more_than_max_concurrent_dispatches_in_flight(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
) -> None:
    queue = queue_factory(rate_limits={"max_concurrent_dispatches": 3})
    client.pause_queue(name=queue.name)
    url = target.url("sleep/100", bucket)
    for _ in range(15):
        client.create_task(parent=queue.name, task=tasks_v2.Task({"http_request": {"url": url}}))
    client.resume_queue(name=queue.name)
    poll(lambda: len(target.hits(bucket)) == 15, timeout=10)
    poll(lambda: target.bucket(bucket).in_flight == 0)
    assert target.bucket(bucket).max_in_flight == 3


def test_pause_holds_dispatch_and_resume_releases_it(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
) -> None:
    paused = queue_factory()
    client.pause_queue(name=paused.name)
    held = client.create_task(
        parent=paused.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("ok", bucket)}}),
    )
    # A task created later in a running queue is dispatched; the paused one must still wait.
    control_bucket = target.new_bucket()
    running = queue_factory()
    client.create_task(
        parent=running.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("ok", control_bucket)}}),
    )
    poll(lambda: target.hits(control_bucket))
    settle = time.monotonic() + 0.3
    while time.monotonic() < settle:
        assert not target.hits(bucket)
        time.sleep(0.02)
    assert client.get_task(name=held.name).dispatch_count == 0
    client.resume_queue(name=paused.name)
    poll(lambda: target.hits(bucket))


def test_purge_drops_pending_tasks_before_they_are_dispatched(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    queue = queue_factory()
    client.pause_queue(name=queue.name)
    purged = [
        client.create_task(
            parent=queue.name,
            task=tasks_v2.Task({"http_request": {"url": target.url("ok", bucket)}}),
        ).name
        for _ in range(5)
    ]
    client.purge_queue(name=queue.name)
    sentinel_bucket = target.new_bucket()
    client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("ok", sentinel_bucket)}}),
    )
    client.resume_queue(name=queue.name)
    poll(lambda: target.hits(sentinel_bucket))
    assert target.hits(bucket) == []
    assert all(_history(emulator, name)["state"] == "purged" for name in purged)


def test_unreachable_target_is_retried(
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    queue = queue_factory(retry_config={"max_attempts": 3, "min_backoff": _seconds(0.01)})
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": "http://127.0.0.1:9/closed-port"}}),
    )
    history = poll(lambda: (h := _history(emulator, task.name))["state"] == "gave_up" and h)
    assert len(history["attempts"]) == 3
    assert all(a["http_status"] is None and a["error"] for a in history["attempts"])


def test_history_endpoint_serves_the_same_history(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_factory: QueueFactory,
    target: Any,
    bucket: str,
    poll: Poll,
    emulator: EmulatorHandle,
) -> None:
    import requests

    queue = queue_factory()
    task = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("ok", bucket)}}),
    )
    poll(lambda: _history(emulator, task.name)["state"] == "succeeded")
    response = requests.get(f"{emulator.http_url}/history", params={"task": task.name}, timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body == emulator.history(task.name)
    assert body["attempts"][0]["http_status"] == 200
    missing = requests.get(
        f"{emulator.http_url}/history", params={"task": f"{queue.name}/tasks/nope"}, timeout=5
    )
    assert missing.status_code == 404
    queues = requests.get(f"{emulator.http_url}/queues", timeout=5).json()["queues"]
    assert queue.name in {q["name"] for q in queues}
