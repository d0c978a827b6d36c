"""Emulator state and the dispatcher: queues, tasks, name tombstones, rate limits, retries.

Data layout (for speed): each queue owns a lock, a dict of live tasks by id, a heap of
``(schedule_time, seq, version, task)`` entries (stale entries are skipped lazily), a token
bucket, and a FIFO of name tombstones. One dispatcher thread pops due tasks of running
queues while the queue's token bucket and concurrency allow, and hands them to a bounded pool
of worker threads that make the HTTP requests over keep-alive connections.

All timestamps are wall-clock seconds (``time.time()``), because schedule_time is wall-clock.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import queue as queue_module
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TextIO, TypeVar

import grpc
from google.cloud.tasks_v2.types import queue as queue_types
from google.cloud.tasks_v2.types import task as task_types
from google.rpc import code_pb2, status_pb2

from emulators.cloudtasks import names
from emulators.cloudtasks.errors import (
    RpcError,
    already_exists,
    failed_precondition,
    invalid,
    not_found,
)
from emulators.cloudtasks.http_client import HttpResult, KeepAliveClient
from emulators.cloudtasks.logs import JsonLog
from emulators.cloudtasks.oidc import TokenSigner, default_audience
from emulators.cloudtasks.queue_config import (
    STATE_PAUSED,
    STATE_RUNNING,
    UPDATABLE_QUEUE_PATHS,
    RetryPolicy,
    duration_seconds,
    normalize_queue,
    normalize_retry_config,
    retry_policy,
    set_duration,
)

QueuePb: Any = queue_types.Queue.pb()
TaskPb: Any = task_types.Task.pb()
AttemptPb: Any = task_types.Attempt.pb()

VIEW_BASIC = 1
VIEW_FULL = 2
METHOD_NAMES = {1: "POST", 2: "GET", 3: "HEAD", 4: "PUT", 5: "DELETE", 6: "PATCH", 7: "OPTIONS"}
_BODY_METHODS = {1, 4, 6}
MAX_SCHEDULE_AHEAD = 30 * 86400.0
MAX_TASK_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 80 * 1024
MAX_URL_LENGTH = 2083
DEFAULT_DISPATCH_DEADLINE = 600.0
MAX_DISPATCH_DEADLINE = 1800.0
MAX_TASK_PAGE = 1000
MAX_QUEUE_PAGE = 9800
SCAN_INTERVAL = 0.002
# Headers production computes or reserves; values given on the task are dropped.
_RESERVED_HEADERS = {"host", "content-length", "user-agent", "authorization"}
_RESERVED_PREFIXES = ("x-google-", "x-appengine-", "x-cloudtasks-")


@dataclass(frozen=True, slots=True)
class EmulatorConfig:
    """Tunables. Production values are the defaults except where noted."""

    tombstone_seconds: float = 3600.0
    """How long a task name stays reserved after its task was completed or deleted."""
    queue_tombstone_seconds: float = 7 * 86400.0
    """How long a deleted queue's name cannot be reused."""
    min_dispatch_deadline: float = 15.0
    """Lower bound for Task.dispatch_deadline (production: 15 s; lower it for fast tests)."""
    dispatch_workers: int = 256
    """HTTP worker threads; also a global cap on attempts in flight across all queues."""


@dataclass(slots=True)
class AttemptRecord:
    """One dispatch attempt, as the history endpoint reports it."""

    attempt: int
    schedule_time: float
    dispatch_time: float
    forced: bool = False
    response_time: float | None = None
    http_status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "schedule_time": self.schedule_time,
            "dispatch_time": self.dispatch_time,
            "response_time": self.response_time,
            "http_status": self.http_status,
            "error": self.error,
            "forced": self.forced,
        }


class _Task:
    __slots__ = ("executions", "first_dispatch", "history", "in_flight", "pb", "removed", "version")

    def __init__(self, pb: Any) -> None:
        self.pb = pb
        # Responses that reached the handler: production's X-CloudTasks-TaskExecutionCount
        # excludes 5xx answers, unlike Task.response_count.
        self.executions = 0
        self.version = 0
        self.in_flight = 0
        self.removed = False
        self.first_dispatch = 0.0
        self.history: list[AttemptRecord] = []


@dataclass(slots=True)
class _Tombstone:
    expires: float
    outcome: str
    history: list[AttemptRecord]


class _Queue:
    __slots__ = (
        "burst",
        "deleted",
        "heap",
        "in_flight",
        "lock",
        "max_concurrent",
        "name",
        "pb",
        "policy",
        "rate",
        "refilled_at",
        "tasks",
        "tokens",
        "tomb_order",
        "tombstones",
    )

    def __init__(self, name: str, pb: Any) -> None:
        self.name = name
        self.pb = pb
        self.lock = threading.Lock()
        self.tasks: dict[str, _Task] = {}
        self.heap: list[tuple[float, int, int, _Task]] = []
        self.tombstones: dict[str, _Tombstone] = {}
        self.tomb_order: deque[tuple[float, str]] = deque()
        self.in_flight = 0
        self.deleted = False
        self.rate = 0.0
        self.burst = 1
        self.max_concurrent = 1
        self.policy = RetryPolicy()
        self.tokens = 0.0
        self.refilled_at = time.monotonic()
        self.apply_limits(fill_bucket=True)

    def apply_limits(self, fill_bucket: bool = False) -> None:
        limits = self.pb.rate_limits
        self.rate = float(limits.max_dispatches_per_second)
        self.burst = int(limits.max_burst_size)
        self.max_concurrent = int(limits.max_concurrent_dispatches)
        self.policy = retry_policy(self.pb.retry_config)
        if fill_bucket:
            self.tokens = float(self.burst)
        else:
            self.tokens = min(self.tokens, float(self.burst))

    def refill(self, now_mono: float) -> None:
        elapsed = now_mono - self.refilled_at
        if elapsed > 0:
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.refilled_at = now_mono

    def tombstone(self, task_id: str, task: _Task, outcome: str, now: float, window: float) -> None:
        task.removed = True
        self.tasks.pop(task_id, None)
        expires = now + window
        self.tombstones[task_id] = _Tombstone(expires, outcome, task.history)
        self.tomb_order.append((expires, task_id))

    def expire_tombstones(self, now: float) -> None:
        order = self.tomb_order
        while order and order[0][0] <= now:
            _expires, task_id = order.popleft()
            stone = self.tombstones.get(task_id)
            if stone is not None and stone.expires <= now:
                del self.tombstones[task_id]


@dataclass(slots=True)
class _Dispatch:
    queue: _Queue
    task: _Task
    task_id: str
    record: AttemptRecord
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None
    deadline: float
    oidc: tuple[str, str] | None = None
    oauth: str | None = None


_Item = TypeVar("_Item")


class _WorkerPool(Generic[_Item]):
    """Daemon threads draining a queue of dispatches, started only as concurrency needs them.

    Unlike ThreadPoolExecutor (whose threads the interpreter joins at exit) a worker stuck on
    a slow target for its whole dispatch deadline never delays shutdown, and there is no
    Future per request. Fast targets are served by a few threads (fewer GIL hand-offs); slow
    ones grow the pool up to ``max_workers``.

    Accounting: every queued item has exactly one taker, either a worker waiting in ``get``
    (``_waiting``, claimed by ``submit``), a newly started worker (its first item), or the next
    worker to come back (``_unclaimed``, when the pool is at its cap).
    """

    def __init__(self, max_workers: int, perform: Callable[[_Item], None]) -> None:
        self._queue: queue_module.SimpleQueue[_Item | None] = queue_module.SimpleQueue()
        self._perform = perform
        self._max = max_workers
        self._lock = threading.Lock()
        self._waiting = 0
        self._unclaimed = 0
        self._stopped = False
        self._threads: list[threading.Thread] = []

    def _run(self) -> None:
        first = True  # a new worker's first item was accounted for when it was started
        while True:
            if not first:
                with self._lock:
                    if self._unclaimed > 0:
                        self._unclaimed -= 1
                    else:
                        self._waiting += 1
            first = False
            item = self._queue.get()
            if item is None:
                return
            self._perform(item)

    def submit(self, item: _Item) -> None:
        started: threading.Thread | None = None
        with self._lock:
            if self._stopped:
                return
            if self._waiting > 0:
                self._waiting -= 1
            elif len(self._threads) < self._max:
                started = threading.Thread(
                    target=self._run, name=f"cloudtasks-dispatch-{len(self._threads)}", daemon=True
                )
                self._threads.append(started)
            else:
                self._unclaimed += 1
        self._queue.put(item)
        if started is not None:
            started.start()

    @property
    def size(self) -> int:
        """Worker threads started so far."""
        return len(self._threads)

    def stop(self, timeout: float = 1.0) -> None:
        """Ask every worker to finish; wait briefly for the idle ones (busy ones may linger)."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def _ts(message: Any, seconds: float) -> None:
    message.FromNanoseconds(int(seconds * 1e9))


def _ts_seconds(message: Any) -> float:
    return float(message.seconds) + float(message.nanos) / 1e9


def _encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise invalid(f"Invalid page_token {token!r}") from exc


def _page_size(requested: int, maximum: int) -> int:
    if requested < 0:
        raise invalid("page_size must not be negative")
    return maximum if requested == 0 else min(requested, maximum)


def http_status_to_code(status: int) -> int:
    """google.rpc.Code for an HTTP status, the standard mapping production reports."""
    if 200 <= status < 300:
        return int(code_pb2.OK)
    mapping: dict[int, int] = {
        400: code_pb2.INVALID_ARGUMENT,
        401: code_pb2.UNAUTHENTICATED,
        403: code_pb2.PERMISSION_DENIED,
        404: code_pb2.NOT_FOUND,
        409: code_pb2.ABORTED,
        416: code_pb2.OUT_OF_RANGE,
        429: code_pb2.RESOURCE_EXHAUSTED,
        499: code_pb2.CANCELLED,
        501: code_pb2.UNIMPLEMENTED,
        503: code_pb2.UNAVAILABLE,
        504: code_pb2.DEADLINE_EXCEEDED,
    }
    if status in mapping:
        return mapping[status]
    if 400 <= status < 500:
        return int(code_pb2.FAILED_PRECONDITION)
    if 500 <= status < 600:
        return int(code_pb2.INTERNAL)
    return int(code_pb2.UNKNOWN)


class Emulator:
    """The whole emulator state; every public method is one RPC (raw protobuf in, out)."""

    def __init__(self, config: EmulatorConfig, log_stream: TextIO | None) -> None:
        self.config = config
        self.log = JsonLog(log_stream)
        self.signer = TokenSigner()
        self._queues: dict[str, _Queue] = {}
        self._deleted_queues: dict[str, float] = {}
        self._registry = threading.Lock()
        self._seq = itertools.count()
        self._rng = random.Random()
        self._wake = threading.Event()
        self._next_wake = 0.0
        self._stopping = False
        self._flight_lock = threading.Lock()
        self._global_in_flight = 0
        self._client = KeepAliveClient()
        self._pool: _WorkerPool[_Dispatch] = _WorkerPool(config.dispatch_workers, self._perform)
        self._dispatcher = threading.Thread(
            target=self._dispatch_loop, name="cloudtasks-dispatcher", daemon=True
        )
        self._dispatcher.start()

    # ----------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Stop dispatching; in-flight HTTP requests are abandoned."""
        self._stopping = True
        self._wake.set()
        self._dispatcher.join(timeout=5.0)
        self._pool.stop()
        self.log.close()

    def reset(self) -> None:
        """Drop every queue, task, tombstone and deleted-queue reservation."""
        with self._registry:
            for queue in self._queues.values():
                with queue.lock:
                    queue.deleted = True
            self._queues.clear()
            self._deleted_queues.clear()
        self.log.emit("reset", "emulator state reset")

    # ----------------------------------------------------------------- queues

    def _queue(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            names.parse_queue(name)
            raise not_found(f"Queue {name} does not exist.")
        return queue

    def _check_name_free(self, name: str) -> None:
        if name in self._queues:
            raise already_exists(f"Queue {name} already exists.")
        reserved_until = self._deleted_queues.get(name)
        if reserved_until is not None:
            if reserved_until > time.time():
                raise failed_precondition(
                    f"The queue {name} cannot be created because a queue with this name "
                    "existed too recently (a deleted queue's name is reserved for "
                    f"{self.config.queue_tombstone_seconds:g} s)."
                )
            del self._deleted_queues[name]

    def create_queue(self, parent: str, queue_pb: Any) -> Any:
        """CreateQueue: ALREADY_EXISTS for a live name, FAILED_PRECONDITION if recently deleted."""
        names.parse_location(parent)
        parsed = names.parse_queue(queue_pb.name)
        if parsed.parent != parent:
            raise invalid(f"Queue name {queue_pb.name} is not in parent {parent}")
        stored = QueuePb()
        stored.CopyFrom(queue_pb)
        stored.ClearField("purge_time")
        stored.state = STATE_RUNNING
        normalize_queue(stored)
        with self._registry:
            self._check_name_free(stored.name)
            self._queues[stored.name] = _Queue(stored.name, stored)
            out = QueuePb()
            out.CopyFrom(stored)
        self.log.emit("queue_create", f"created queue {stored.name}", queue=stored.name)
        return out

    def get_queue(self, name: str) -> Any:
        queue = self._queue(name)
        out = QueuePb()
        with queue.lock:
            out.CopyFrom(queue.pb)
        return out

    def list_queues(
        self, parent: str, filter_text: str, page_size: int, page_token: str
    ) -> tuple[list[Any], str]:
        """ListQueues, ordered by name; supports the ``state: PAUSED`` style filter."""
        names.parse_location(parent)
        wanted_state = self._parse_state_filter(filter_text)
        size = _page_size(page_size, MAX_QUEUE_PAGE)
        after = _decode_token(page_token) if page_token else ""
        prefix = parent + "/queues/"
        with self._registry:
            candidates = sorted(n for n in self._queues if n.startswith(prefix) and n > after)
            queues = [self._queues[n] for n in candidates]
        result: list[Any] = []
        for queue in queues:
            with queue.lock:
                if wanted_state is not None and queue.pb.state != wanted_state:
                    continue
                out = QueuePb()
                out.CopyFrom(queue.pb)
            result.append(out)
            if len(result) == size:
                break
        more = bool(result) and len(result) == size and result[-1].name != candidates[-1]
        return result, (_encode_token(result[-1].name) if more else "")

    @staticmethod
    def _parse_state_filter(filter_text: str) -> int | None:
        text = filter_text.strip()
        if not text:
            return None
        key, sep, value = text.partition(":")
        if not sep:
            key, sep, value = text.partition("=")
        states = {"RUNNING": STATE_RUNNING, "PAUSED": STATE_PAUSED, "DISABLED": 3}
        if sep and key.strip() == "state" and value.strip() in states:
            return states[value.strip()]
        raise invalid(f"Unsupported filter {filter_text!r}; the emulator supports 'state: STATE'")

    def update_queue(self, queue_pb: Any, mask_paths: list[str]) -> Any:
        """UpdateQueue: applies the masked fields; creates the queue if it does not exist."""
        names.parse_queue(queue_pb.name)
        for path in mask_paths:
            if path not in UPDATABLE_QUEUE_PATHS:
                raise invalid(f"update_mask path {path!r} is not updatable")
        with self._registry:
            queue = self._queues.get(queue_pb.name)
            if queue is None:
                self._check_name_free(queue_pb.name)
                created = QueuePb()
                created.name = queue_pb.name
                self._apply_mask(created, queue_pb, mask_paths)
                created.state = STATE_RUNNING
                normalize_queue(created)
                self._queues[created.name] = _Queue(created.name, created)
                out = QueuePb()
                out.CopyFrom(created)
                self.log.emit(
                    "queue_create", f"created queue {created.name} by update", queue=created.name
                )
                return out
        with queue.lock:
            candidate = QueuePb()
            candidate.CopyFrom(queue.pb)
            self._apply_mask(candidate, queue_pb, mask_paths)
            normalize_queue(candidate)
            queue.pb = candidate
            queue.apply_limits()
            out = QueuePb()
            out.CopyFrom(candidate)
        self.log.emit(
            "queue_update", f"updated queue {queue.name}", queue=queue.name, paths=mask_paths
        )
        self._wake.set()
        return out

    @staticmethod
    def _apply_mask(target: Any, source: Any, paths: list[str]) -> None:
        if not paths:
            paths = [p for p in sorted(UPDATABLE_QUEUE_PATHS) if "." not in p]
        for path in paths:
            head, _, leaf = path.partition(".")
            if leaf:
                src_parent = getattr(source, head)
                dst_parent = getattr(target, head)
                if src_parent.DESCRIPTOR.fields_by_name[leaf].message_type is not None:
                    dst_field = getattr(dst_parent, leaf)
                    dst_field.CopyFrom(getattr(src_parent, leaf))
                else:
                    setattr(dst_parent, leaf, getattr(src_parent, leaf))
            elif source.HasField(head):
                getattr(target, head).CopyFrom(getattr(source, head))
            else:
                target.ClearField(head)

    def delete_queue(self, name: str) -> None:
        """DeleteQueue: drops its tasks; the name is reserved for queue_tombstone_seconds."""
        with self._registry:
            queue = self._queue(name)
            del self._queues[name]
            self._deleted_queues[name] = time.time() + self.config.queue_tombstone_seconds
        with queue.lock:
            queue.deleted = True
            queue.heap.clear()
        self.log.emit("queue_delete", f"deleted queue {name}", queue=name)

    def _set_state(self, name: str, state: int, event: str) -> Any:
        queue = self._queue(name)
        out = QueuePb()
        with queue.lock:
            queue.pb.state = state
            out.CopyFrom(queue.pb)
        self.log.emit(event, f"{event.split('_')[1]}d queue {name}", queue=name)
        self._wake.set()
        return out

    def pause_queue(self, name: str) -> Any:
        return self._set_state(name, STATE_PAUSED, "queue_pause")

    def resume_queue(self, name: str) -> Any:
        return self._set_state(name, STATE_RUNNING, "queue_resume")

    def purge_queue(self, name: str) -> Any:
        """PurgeQueue: deletes every task created before the call (names stay tombstoned)."""
        queue = self._queue(name)
        now = time.time()
        out = QueuePb()
        with queue.lock:
            purged = len(queue.tasks)
            for task_id, task in list(queue.tasks.items()):
                queue.tombstone(task_id, task, "purged", now, self.config.tombstone_seconds)
            queue.heap.clear()
            _ts(queue.pb.purge_time, now)
            out.CopyFrom(queue.pb)
        self.log.emit("queue_purge", f"purged queue {name}", queue=name, tasks=purged)
        return out

    # ----------------------------------------------------------------- tasks

    def _validate_task(self, task: Any, now: float) -> None:
        if task.HasField("app_engine_http_request"):
            raise RpcError(
                grpc.StatusCode.UNIMPLEMENTED,
                "App Engine tasks are not supported by the emulator; use http_request",
            )
        if not task.HasField("http_request"):
            raise invalid("Task.http_request is required")
        request = task.http_request
        url = request.url
        if not url.startswith(("http://", "https://")):
            raise invalid(f"HttpRequest.url must begin with http:// or https://, got {url!r}")
        if len(url) > MAX_URL_LENGTH:
            raise invalid(f"HttpRequest.url is longer than {MAX_URL_LENGTH} characters")
        if request.http_method == 0:
            request.http_method = 1
        if request.body and request.http_method not in _BODY_METHODS:
            raise invalid("A request body is allowed only with HTTP method POST, PUT or PATCH")
        header_bytes = sum(len(k) + len(v) for k, v in request.headers.items())
        if header_bytes >= MAX_HEADER_BYTES:
            raise invalid("HttpRequest.headers must be smaller than 80KB")
        if request.HasField("oidc_token") and not request.oidc_token.service_account_email:
            raise invalid("oidc_token.service_account_email is required")
        if request.HasField("oauth_token") and not request.oauth_token.service_account_email:
            raise invalid("oauth_token.service_account_email is required")
        if task.HasField("dispatch_deadline"):
            deadline = duration_seconds(task.dispatch_deadline)
            low = self.config.min_dispatch_deadline
            if not low <= deadline <= MAX_DISPATCH_DEADLINE:
                raise invalid(
                    f"dispatch_deadline must be in [{low:g}s, {MAX_DISPATCH_DEADLINE:g}s], "
                    f"got {deadline:g}s"
                )
        else:
            set_duration(task.dispatch_deadline, DEFAULT_DISPATCH_DEADLINE)
        if task.HasField("retry_config"):
            normalize_retry_config(task.retry_config)
        schedule = _ts_seconds(task.schedule_time) if task.HasField("schedule_time") else 0.0
        if schedule > now + MAX_SCHEDULE_AHEAD:
            raise invalid("The task's schedule_time cannot be more than 30 days in the future")
        if schedule < now:
            _ts(task.schedule_time, now)
        if task.ByteSize() > MAX_TASK_BYTES:
            raise invalid("Task size exceeds the maximum of 1MB")

    def create_task(self, parent: str, task: Any, view: int) -> Any:
        """CreateTask: ALREADY_EXISTS for a name that is live or tombstoned in the queue."""
        now = time.time()
        names.parse_queue(parent)
        if task.name:
            parsed = names.parse_task(task.name)
            if parsed.queue != parent:
                raise invalid(f"Task name {task.name} is not in queue {parent}")
            task_id: str | None = parsed.task_id
        else:
            task_id = None
        for output_only in (
            "create_time",
            "dispatch_count",
            "response_count",
            "first_attempt",
            "last_attempt",
            "view",
        ):
            task.ClearField(output_only)
        self._validate_task(task, now)
        _ts(task.create_time, float(int(now)))
        queue = self._queue(parent)
        state = _Task(task)
        with queue.lock:
            if queue.deleted:
                raise not_found(f"Queue {parent} does not exist.")
            queue.expire_tombstones(now)
            if task_id is None:
                task_id = self._generate_id(queue)
                task.name = f"{parent}/tasks/{task_id}"
            elif task_id in queue.tasks or task_id in queue.tombstones:
                raise already_exists(
                    "The task cannot be created because a task with this name existed too "
                    "recently. For more information about task de-duplication see "
                    "https://cloud.google.com/tasks/docs/reference/rest/v2/"
                    "projects.locations.queues.tasks/create#body.request_body.FIELDS.task"
                )
            queue.tasks[task_id] = state
            schedule = _ts_seconds(task.schedule_time)
            heapq.heappush(queue.heap, (schedule, next(self._seq), 0, state))
            out = self._task_view(task, view)
            running = queue.pb.state == STATE_RUNNING
        # Waking the dispatcher thread costs a GIL hand-off; a paused queue cannot dispatch.
        if running and schedule < self._next_wake:
            self._wake.set()
        if self.log.enabled:
            self.log.emit(
                "create",
                f"created task {task.name}",
                queue=parent,
                task=task.name,
                schedule_time=schedule,
                url=task.http_request.url,
            )
        return out

    def _generate_id(self, queue: _Queue) -> str:
        while True:
            candidate = str(self._rng.getrandbits(63))
            if candidate not in queue.tasks and candidate not in queue.tombstones:
                return candidate

    @staticmethod
    def _task_view(task: Any, view: int) -> Any:
        out = TaskPb()
        out.CopyFrom(task)
        if view == VIEW_FULL:
            out.view = VIEW_FULL
        else:
            out.view = VIEW_BASIC
            if out.HasField("http_request"):
                out.http_request.ClearField("body")
        return out

    def _locate(self, name: str) -> tuple[_Queue, str]:
        parsed = names.parse_task(name)
        queue = self._queues.get(parsed.queue)
        if queue is None:
            raise not_found(f"Queue {parsed.queue} does not exist.")
        return queue, parsed.task_id

    def get_task(self, name: str, view: int) -> Any:
        queue, task_id = self._locate(name)
        with queue.lock:
            state = queue.tasks.get(task_id)
            if state is None:
                raise not_found(f"Task {name} does not exist.")
            return self._task_view(state.pb, view)

    def list_tasks(
        self, parent: str, view: int, page_size: int, page_token: str
    ) -> tuple[list[Any], str]:
        """ListTasks ordered by task id (production promises no order)."""
        names.parse_queue(parent)
        queue = self._queue(parent)
        size = _page_size(page_size, MAX_TASK_PAGE)
        after = _decode_token(page_token) if page_token else ""
        with queue.lock:
            ids = sorted(i for i in queue.tasks if i > after)
            chosen = ids[:size]
            result = [self._task_view(queue.tasks[i].pb, view) for i in chosen]
        more = len(ids) > size
        return result, (_encode_token(chosen[-1]) if more else "")

    def delete_task(self, name: str) -> None:
        """DeleteTask: a scheduled or dispatched task; its name stays tombstoned."""
        queue, task_id = self._locate(name)
        now = time.time()
        with queue.lock:
            state = queue.tasks.get(task_id)
            if state is None:
                raise not_found(f"Task {name} does not exist.")
            queue.tombstone(task_id, state, "deleted", now, self.config.tombstone_seconds)
        self.log.emit("delete", f"deleted task {name}", queue=queue.name, task=name)

    def run_task(self, name: str, view: int) -> Any:
        """RunTask: dispatch now, ignoring pause, rate limits and concurrency."""
        queue, task_id = self._locate(name)
        with queue.lock:
            state = queue.tasks.get(task_id)
            if state is None:
                raise not_found(f"Task {name} does not exist.")
            state.version += 1
            dispatch = self._start_attempt(queue, state, task_id, time.time(), forced=True)
            out = self._task_view(state.pb, view)
        with self._flight_lock:
            self._global_in_flight += 1
        self._pool.submit(dispatch)
        return out

    # ----------------------------------------------------------------- history / debug

    def history(self, name: str) -> dict[str, Any] | None:
        """Attempts of a live or tombstoned task, or None when the emulator knows no such task."""
        parsed = names.parse_task(name)
        queue = self._queues.get(parsed.queue)
        if queue is None:
            return None
        now = time.time()
        with queue.lock:
            state = queue.tasks.get(parsed.task_id)
            if state is not None:
                status = "dispatching" if state.in_flight else "scheduled"
                attempts = [a.to_json() for a in state.history]
                schedule: float | None = _ts_seconds(state.pb.schedule_time)
            else:
                stone = queue.tombstones.get(parsed.task_id)
                if stone is None or stone.expires <= now:
                    return None
                status = stone.outcome
                attempts = [a.to_json() for a in stone.history]
                schedule = None
        return {"task": name, "state": status, "schedule_time": schedule, "attempts": attempts}

    def queue_stats(self) -> list[dict[str, Any]]:
        """One summary per queue for the debug endpoint."""
        with self._registry:
            queues = list(self._queues.values())
        stats = []
        for queue in sorted(queues, key=lambda q: q.name):
            with queue.lock:
                stats.append(
                    {
                        "name": queue.name,
                        "state": {STATE_RUNNING: "RUNNING", STATE_PAUSED: "PAUSED"}.get(
                            queue.pb.state, "UNKNOWN"
                        ),
                        "tasks": len(queue.tasks),
                        "in_flight": queue.in_flight,
                        "tombstones": len(queue.tombstones),
                        "max_dispatches_per_second": queue.rate,
                        "max_burst_size": queue.burst,
                        "max_concurrent_dispatches": queue.max_concurrent,
                    }
                )
        return stats

    # ----------------------------------------------------------------- dispatch

    def _start_attempt(
        self, queue: _Queue, state: _Task, task_id: str, now: float, forced: bool
    ) -> _Dispatch:
        """Account a new attempt (caller holds queue.lock) and build its HTTP request."""
        task = state.pb
        previous_status = state.history[-1].http_status if state.history else None
        retry_count = task.dispatch_count
        schedule = _ts_seconds(task.schedule_time)
        task.dispatch_count += 1
        if task.dispatch_count == 1:
            _ts(task.first_attempt.dispatch_time, now)
            state.first_dispatch = now
        last = task.last_attempt
        last.Clear()
        _ts(last.schedule_time, schedule)
        _ts(last.dispatch_time, now)
        record = AttemptRecord(
            attempt=task.dispatch_count, schedule_time=schedule, dispatch_time=now, forced=forced
        )
        state.history.append(record)
        state.in_flight += 1
        queue.in_flight += 1
        request = task.http_request
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _RESERVED_HEADERS and not k.lower().startswith(_RESERVED_PREFIXES)
        }
        headers["User-Agent"] = "Google-Cloud-Tasks"
        headers["X-CloudTasks-QueueName"] = names.short_id(queue.name)
        headers["X-CloudTasks-TaskName"] = task_id
        headers["X-CloudTasks-TaskRetryCount"] = str(retry_count)
        headers["X-CloudTasks-TaskExecutionCount"] = str(state.executions)
        headers["X-CloudTasks-TaskETA"] = f"{schedule:.6f}"
        if previous_status is not None:
            headers["X-CloudTasks-TaskPreviousResponse"] = str(previous_status)
        oidc = None
        oauth = None
        if request.HasField("oidc_token"):
            audience = request.oidc_token.audience or default_audience(request.url)
            oidc = (request.oidc_token.service_account_email, audience)
        elif request.HasField("oauth_token"):
            oauth = request.oauth_token.service_account_email
        method = METHOD_NAMES.get(request.http_method, "POST")
        return _Dispatch(
            queue=queue,
            task=state,
            task_id=task_id,
            record=record,
            method=method,
            url=request.url,
            headers=headers,
            body=bytes(request.body) if request.body else None,
            deadline=duration_seconds(task.dispatch_deadline) or DEFAULT_DISPATCH_DEADLINE,
            oidc=oidc,
            oauth=oauth,
        )

    def _dispatch_loop(self) -> None:
        last_scan = 0.0
        while not self._stopping:
            # Every create and every completion may wake us; under load that is thousands of
            # GIL hand-offs per second. Scanning at most every SCAN_INTERVAL batches them, for
            # at most that much extra dispatch latency.
            pause = last_scan + SCAN_INTERVAL - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            last_scan = time.monotonic()
            self._wake.clear()
            # Any create during this scan must wake us again: it may be due before next_due.
            self._next_wake = 0.0
            now = time.time()
            now_mono = time.monotonic()
            next_due = now + 0.5
            batch: list[_Dispatch] = []
            for queue in list(self._queues.values()):
                with queue.lock:
                    if queue.deleted or queue.pb.state != STATE_RUNNING or not queue.heap:
                        continue
                    queue.refill(now_mono)
                    heap = queue.heap
                    while heap:
                        schedule, _, version, state = heap[0]
                        if state.removed or state.version != version:
                            heapq.heappop(heap)
                            continue
                        if schedule > now:
                            next_due = min(next_due, schedule)
                            break
                        if queue.in_flight >= queue.max_concurrent:
                            break
                        if self._global_in_flight + len(batch) >= self.config.dispatch_workers:
                            break
                        if queue.tokens < 1.0:
                            next_due = min(next_due, now + (1.0 - queue.tokens) / queue.rate)
                            break
                        heapq.heappop(heap)
                        queue.tokens -= 1.0
                        state.version += 1
                        task_id = names.short_id(state.pb.name)
                        batch.append(self._start_attempt(queue, state, task_id, now, False))
            if batch:
                with self._flight_lock:
                    self._global_in_flight += len(batch)
                for dispatch in batch:
                    self._pool.submit(dispatch)
            self._next_wake = next_due
            timeout = next_due - time.time()
            if timeout > 0:
                self._wake.wait(timeout)

    def _perform(self, dispatch: _Dispatch) -> None:
        try:
            headers = dispatch.headers
            if dispatch.oidc is not None:
                token = self.signer.token(*dispatch.oidc)
                headers["Authorization"] = f"Bearer {token}"
            elif dispatch.oauth is not None:
                headers["Authorization"] = f"Bearer emulator-oauth-{dispatch.oauth}"
            if self.log.enabled:
                self.log.emit(
                    "dispatch",
                    f"dispatching task {dispatch.task.pb.name} attempt {dispatch.record.attempt}",
                    queue=dispatch.queue.name,
                    task=dispatch.task.pb.name,
                    attempt=dispatch.record.attempt,
                    url=dispatch.url,
                    forced=dispatch.record.forced,
                )
            result = self._client.request(
                dispatch.method, dispatch.url, headers, dispatch.body, dispatch.deadline
            )
        except Exception as exc:  # a worker must never die silently
            result = HttpResult(status=None, error=f"{type(exc).__name__}: {exc}")
        finally:
            with self._flight_lock:
                self._global_in_flight -= 1
        self._complete(dispatch, result)

    def _complete(self, dispatch: _Dispatch, result: HttpResult) -> None:
        queue = dispatch.queue
        state = dispatch.task
        task = state.pb
        now = time.time()
        event: tuple[str, str, dict[str, Any]] | None = None
        with queue.lock:
            record = dispatch.record
            record.response_time = now if result.status is not None else None
            record.http_status = result.status
            record.error = result.error
            queue.in_flight -= 1
            state.in_flight -= 1
            if state.removed or queue.deleted:
                pass
            else:
                last = task.last_attempt
                if result.status is not None:
                    task.response_count += 1
                    if result.status < 500:
                        state.executions += 1
                    _ts(last.response_time, now)
                    last.response_status.CopyFrom(
                        status_pb2.Status(
                            code=http_status_to_code(result.status),
                            message=f"HTTP status code {result.status}",
                        )
                    )
                else:
                    code = code_pb2.DEADLINE_EXCEEDED if result.timed_out else code_pb2.UNAVAILABLE
                    last.response_status.CopyFrom(
                        status_pb2.Status(code=code, message=result.error or "no response")
                    )
                fields: dict[str, Any] = {
                    "queue": queue.name,
                    "task": task.name,
                    "attempt": record.attempt,
                    "http_status": result.status,
                    "error": result.error,
                }
                if result.status is not None and 200 <= result.status < 300:
                    queue.tombstone(
                        dispatch.task_id, state, "succeeded", now, self.config.tombstone_seconds
                    )
                    event = ("complete", "succeeded", fields)
                elif state.in_flight == 0:
                    policy = (
                        retry_policy(task.retry_config)
                        if task.HasField("retry_config")
                        else queue.policy
                    )
                    if policy.gives_up(task.dispatch_count, now - state.first_dispatch):
                        queue.tombstone(
                            dispatch.task_id, state, "gave_up", now, self.config.tombstone_seconds
                        )
                        event = ("give_up", "gave up", fields)
                    else:
                        delay = policy.backoff(task.dispatch_count)
                        schedule = now + delay
                        _ts(task.schedule_time, schedule)
                        state.version += 1
                        heapq.heappush(
                            queue.heap, (schedule, next(self._seq), state.version, state)
                        )
                        fields["retry_in"] = delay
                        fields["schedule_time"] = schedule
                        event = ("retry", "scheduled retry", fields)
        self._wake.set()
        if event is not None and self.log.enabled:
            kind, verb, fields = event
            severity = "WARNING" if kind != "complete" else "INFO"
            self.log.emit(kind, f"task {task.name} {verb}", severity=severity, **fields)


@contextmanager
def running(config: EmulatorConfig, log_stream: TextIO | None = None) -> Iterator[Emulator]:
    """An Emulator for the duration of a ``with`` block (core only, no servers)."""
    emulator = Emulator(config, log_stream)
    try:
        yield emulator
    finally:
        emulator.stop()


__all__ = ["AttemptRecord", "Emulator", "EmulatorConfig", "http_status_to_code"]
