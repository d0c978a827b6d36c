"""Fixtures for the Cloud Tasks emulator conformance suite.

The emulator runs in-process (one per session, plus short-lived ones for tests that need
special settings); the official ``CloudTasksClient`` talks to it over an insecure channel.
``target`` is a local HTTP server that the emulator dispatches to; it records every request
and counts requests in flight. Its behaviour is encoded in the URL path so that tasks of one
test never see another test's behaviour:

- ``/ok/<bucket>``: 200
- ``/status/<code>/<bucket>``: that status
- ``/sleep/<ms>/<bucket>``: 200 after sleeping
- ``/fail-first/<n>/<bucket>``: 500 while X-CloudTasks-TaskRetryCount < n, then 200
- ``/fail-first-4xx/<n>/<bucket>``: the same with 409 (a response that counts as an execution)
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from emulators.cloudtasks import EmulatorHandle, start_server
from tests.support.polling import wait_for

PROJECT = "test-project"
LOCATION = "europe-west1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"


@dataclass
class Hit:
    """One request the target received."""

    time: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Bucket:
    hits: list[Hit] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


class Target:
    """A recording HTTP target server (see module docstring for the path grammar)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        self._counter = itertools.count()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status = target.handle(self.command, self.path, dict(self.headers), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self._handle()

            def do_GET(self) -> None:
                self._handle()

            def do_PUT(self) -> None:
                self._handle()

            def do_PATCH(self) -> None:
                self._handle()

            def do_DELETE(self) -> None:
                self._handle()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def new_bucket(self) -> str:
        return f"b{next(self._counter)}-{uuid.uuid4().hex[:8]}"

    def url(self, behaviour: str, bucket: str, query: str = "") -> str:
        suffix = f"?{query}" if query else ""
        return f"http://127.0.0.1:{self.port}/{behaviour}/{bucket}{suffix}"

    def bucket(self, name: str) -> Bucket:
        with self._lock:
            return self._buckets.setdefault(name, Bucket())

    def hits(self, name: str) -> list[Hit]:
        with self._lock:
            return list(self._buckets.setdefault(name, Bucket()).hits)

    def handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> int:
        path = raw_path.split("?", 1)[0]
        parts = path.strip("/").split("/")
        bucket_name = parts[-1]
        bucket = self.bucket(bucket_name)
        with self._lock:
            bucket.in_flight += 1
            bucket.max_in_flight = max(bucket.max_in_flight, bucket.in_flight)
            bucket.hits.append(Hit(time.time(), method, raw_path, headers, body))
        try:
            kind = parts[0]
            if kind == "ok":
                return 200
            if kind == "status":
                return int(parts[1])
            if kind == "sleep":
                time.sleep(int(parts[1]) / 1000.0)
                return 200
            if kind in {"fail-first", "fail-first-4xx"}:
                retry_count = int(headers.get("X-CloudTasks-TaskRetryCount", "0"))
                failure = 500 if kind == "fail-first" else 409
                return failure if retry_count < int(parts[1]) else 200
            return 404
        finally:
            with self._lock:
                bucket.in_flight -= 1

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_client(handle: EmulatorHandle) -> tasks_v2.CloudTasksClient:
    """The official client, unchanged, over an insecure channel to the emulator."""
    channel = grpc.insecure_channel(handle.grpc_target)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorHandle]:
    handle = start_server(min_dispatch_deadline=0.1, log_stream=None)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def client(emulator: EmulatorHandle) -> tasks_v2.CloudTasksClient:
    return make_client(emulator)


@pytest.fixture(scope="session")
def target() -> Iterator[Target]:
    server = Target()
    yield server
    server.close()


_queue_counter = itertools.count()


@pytest.fixture
def queue_factory(client: tasks_v2.CloudTasksClient) -> Callable[..., tasks_v2.Queue]:
    """Create a uniquely named queue; keyword arguments become Queue fields."""

    def create(**fields: Any) -> tasks_v2.Queue:
        name = f"{PARENT}/queues/q{next(_queue_counter)}-{uuid.uuid4().hex[:10]}"
        return client.create_queue(parent=PARENT, queue=tasks_v2.Queue({"name": name, **fields}))

    return create


@pytest.fixture
def bucket(target: Target) -> str:
    """A fresh bucket name: the target records this test's requests under it."""
    return target.new_bucket()


@pytest.fixture(scope="session")
def parent() -> str:
    """The location every test queue lives in."""
    return PARENT


@pytest.fixture(scope="session")
def poll() -> Callable[..., Any]:
    """``wait_for`` with this suite's short defaults, as a fixture."""
    return functools.partial(wait_for, timeout=10.0, interval=0.01)


@pytest.fixture(scope="session")
def client_for() -> Callable[[EmulatorHandle], tasks_v2.CloudTasksClient]:
    """Build an official client for a dedicated emulator started inside a test."""
    return make_client


@pytest.fixture
def private_emulator() -> Iterator[Callable[..., EmulatorHandle]]:
    """Start extra emulators with special settings; all are stopped after the test."""
    handles: list[EmulatorHandle] = []

    def start(**settings: Any) -> EmulatorHandle:
        settings.setdefault("log_stream", None)
        handle = start_server(**settings)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()
