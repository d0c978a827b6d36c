"""``python -m emulators.cloudtasks`` as the local stack starts it: readiness, RPCs, JSON log."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport
from google.protobuf import duration_pb2

from emulators.process import ManagedProcess, free_port, http_ready

pytestmark = pytest.mark.integration

PARENT = "projects/cli-project/locations/us-central1"


@pytest.fixture(scope="module")
def process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ManagedProcess, str, str]]:
    grpc_port, http_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("cloudtasks") / "emulator.log"
    repo = Path(__file__).resolve().parents[3]
    proc = ManagedProcess(
        name="cloudtasks",
        argv=[
            sys.executable,
            "-m",
            "emulators.cloudtasks",
            "--host",
            "127.0.0.1",
            "--port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            "--tombstone-seconds",
            "5",
        ],
        log_path=log_path,
        ready=http_ready(f"http://127.0.0.1:{http_port}/healthz"),
        cwd=repo,
        startup_timeout=30.0,
    )
    proc.start()
    try:
        proc.wait_ready()
        yield proc, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}"
    finally:
        proc.stop()


def test_cli_serves_grpc_and_logs_json_lines(
    process: tuple[ManagedProcess, str, str],
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
) -> None:
    proc, grpc_target, http_url = process
    assert requests.get(f"{http_url}/healthz", timeout=5).text == "ok"
    client = tasks_v2.CloudTasksClient(
        transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(grpc_target))
    )
    queue = client.create_queue(
        parent=PARENT,
        queue=tasks_v2.Queue(
            {
                "name": f"{PARENT}/queues/cli",
                "retry_config": {
                    "max_attempts": 2,
                    "min_backoff": duration_pb2.Duration(nanos=10_000_000),
                },
            }
        ),
    )
    ok = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task(
            {"name": f"{queue.name}/tasks/ok", "http_request": {"url": target.url("ok", bucket)}}
        ),
    )
    failing = client.create_task(
        parent=queue.name,
        task=tasks_v2.Task({"http_request": {"url": target.url("status/500", bucket)}}),
    )
    with pytest.raises(exceptions.AlreadyExists):
        client.create_task(parent=queue.name, task=ok)

    def finished() -> bool:
        states = []
        for name in (ok.name, failing.name):
            response = requests.get(f"{http_url}/history", params={"task": name}, timeout=5)
            states.append(response.json().get("state") if response.ok else None)
        return states == ["succeeded", "gave_up"]

    poll(finished)

    def events() -> list[dict[str, Any]]:
        lines = proc.log_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    wanted = {"create", "dispatch", "complete", "retry", "give_up"}

    def all_kinds_logged() -> list[dict[str, Any]] | None:
        found = events()
        return found if wanted <= {e["event"] for e in found} else None

    records = poll(all_kinds_logged)
    for record in records:
        assert {"severity", "message", "event", "time"} <= record.keys()
    kinds = [(e["event"], e.get("task")) for e in records]
    assert kinds.count(("create", ok.name)) == 1
    assert kinds.count(("dispatch", failing.name)) == 2
    assert kinds.count(("retry", failing.name)) == 1
    assert kinds.count(("give_up", failing.name)) == 1


def test_reset_endpoint_drops_everything(process: tuple[ManagedProcess, str, str]) -> None:
    _proc, grpc_target, http_url = process
    client = tasks_v2.CloudTasksClient(
        transport=CloudTasksGrpcTransport(channel=grpc.insecure_channel(grpc_target))
    )
    client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=f"{PARENT}/queues/to-reset"))
    assert requests.post(f"{http_url}/reset", timeout=5).json() == {"reset": True}
    assert list(client.list_queues(parent=PARENT)) == []
    assert requests.get(f"{http_url}/queues", timeout=5).json() == {"queues": []}


def test_without_http_port_a_free_one_is_picked_and_printed(tmp_path: Path) -> None:
    grpc_port = free_port()
    log_path = tmp_path / "emulator.log"
    printed: dict[str, str] = {}

    def http_url_printed() -> bool:
        text = log_path.read_text() if log_path.exists() else ""
        match = re.search(r"HTTP (http://127\.0\.0\.1:\d+)", text)
        if match is None:
            return False
        printed["url"] = match.group(1)
        return requests.get(f"{printed['url']}/healthz", timeout=1).text == "ok"

    proc = ManagedProcess(
        name="cloudtasks-no-http-port",
        argv=[sys.executable, "-m", "emulators.cloudtasks", "--port", str(grpc_port), "--quiet"],
        log_path=log_path,
        ready=http_url_printed,
        cwd=Path(__file__).resolve().parents[3],
        startup_timeout=30.0,
    )
    proc.start()
    try:
        proc.wait_ready()
        assert f"gRPC 127.0.0.1:{grpc_port}" in log_path.read_text()
        assert not printed["url"].endswith(f":{grpc_port}")
    finally:
        proc.stop()
