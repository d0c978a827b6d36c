"""The local stack contract: env file, real gcloud against it, clear refusals, clean teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulators.process import StackError, pid_alive
from emulators.stack import LocalStack, StackOptions, read_record
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

pytestmark = pytest.mark.e2e

REQUIRED_ENV = (
    "GOOGLE_CLOUD_PROJECT",
    "PUBSUB_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "CLOUD_TASKS_EMULATOR_HOST",
    "DATABASE_URL",
    "COLLECTOR_URL",
    "CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB",
    "CLOUDSDK_AUTH_DISABLE_CREDENTIALS",
    "CLOUDSDK_CORE_PROJECT",
)


def test_stack_env_file_points_plain_gcloud_at_the_stack(stack: StackHandle) -> None:
    text = stack.stack.env_path.read_text()
    exported = {
        line.split("=", 1)[0].removeprefix("export ")
        for line in text.splitlines()
        if line.startswith("export ")
    }
    assert set(REQUIRED_ENV) <= exported
    # Only what the file exports: the test's own environment must not make this pass.
    clean_env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLOUDSDK_", "PUBSUB_", "GOOGLE_CLOUD_"))
    }
    listed = subprocess.run(
        ["bash", "-c", f"source {stack.stack.env_path} && gcloud pubsub topics list --format=json"],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    names = {topic["name"].rsplit("/", 1)[1] for topic in json.loads(listed.stdout)}
    assert {
        "dispatcher-ticks",
        "dispatcher-due",
        "dispatcher-maintenance",
        "dispatcher-sync",
        "dispatcher-ticks-dlq",
        "dispatcher-due-dlq",
    } <= names


def test_a_tick_published_with_gcloud_reaches_select(stack: StackHandle) -> None:
    message_id = stack.gcloud_publish("dispatcher-ticks", "{}")
    wait_for(
        lambda: message_id in stack.log("fn-select"),
        timeout=30,
        message=f"select to log message {message_id}",
    )


def test_starting_the_same_stack_twice_is_refused(stack: StackHandle) -> None:
    again = LocalStack(StackOptions(state_dir=stack.stack.state_dir, scheduler=False))
    with pytest.raises(StackError, match="already running"):
        again.up()
    # The refusal must not have touched the running stack.
    assert all(c.alive for c in stack.stack.status())


def test_a_taken_port_is_refused_before_anything_starts(stack: StackHandle, tmp_path: Path) -> None:
    taken = stack.stack.ports["pubsub"]
    other = LocalStack(StackOptions(state_dir=tmp_path, ports={"pubsub": taken}, scheduler=False))
    with pytest.raises(StackError, match=f"port {taken} for pubsub is already in use"):
        other.up()
    assert read_record(tmp_path) is None


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_cli_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    state = str(tmp_path / "cli-stack")
    # What an earlier stack in this directory received must not pass for this one's.
    Path(state).mkdir()
    stale = {name: Path(state) / name for name in ("collector.jsonl", "smtp-sink.jsonl")}
    for path in stale.values():
        path.write_text('{"from": "an earlier stack"}\n')
    up = _cli("stack", "up", "--detach", "--no-scheduler", "--state-dir", state)
    assert up.returncode == 0, up.stderr + up.stdout
    record = read_record(Path(state))
    assert record is not None
    pids = [int(c["pid"]) for c in record["components"].values()]
    assert len(pids) >= 9 and all(pid_alive(p) for p in pids)

    status = _cli("stack", "status", "--json", "--state-dir", state)
    assert status.returncode == 0, status.stderr
    assert {c["name"] for c in json.loads(status.stdout) if c["ready"]} >= {
        "pubsub",
        "firestore",
        "cloudtasks",
        "postgres",
        "collector",
        "fn-select",
    }

    again = _cli("stack", "up", "--detach", "--state-dir", state)
    assert again.returncode == 1
    assert "already running" in again.stderr and "Traceback" not in again.stderr

    down = _cli("stack", "down", "--state-dir", state)
    assert down.returncode == 0, down.stderr
    survivors = [p for p in pids if pid_alive(p)]
    assert not survivors, f"still running after stack down: {survivors}"
    assert not (Path(state) / "stack.env").exists()
    assert _cli("stack", "status", "--state-dir", state).returncode == 1
    for path in stale.values():
        assert "an earlier stack" not in (path.read_text() if path.exists() else "")
