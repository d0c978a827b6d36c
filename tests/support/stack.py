"""Test-side handle on a running local stack: gcloud, pulls, logs, and wiping data between tests."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from emulators.stack import LocalStack


@dataclass(frozen=True)
class PulledMessage:
    data: bytes
    attributes: dict[str, str]
    message_id: str


class StackHandle:
    def __init__(self, stack: LocalStack, env: Mapping[str, str]) -> None:
        self.stack = stack
        self.env = dict(env)
        self.project = env["GOOGLE_CLOUD_PROJECT"]

    # -- the real gcloud CLI ------------------------------------------------------------------
    def gcloud(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        gcloud = shutil.which("gcloud")
        assert gcloud is not None, "gcloud must be installed"
        return subprocess.run(
            [gcloud, *args, "--format=json"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def gcloud_publish(
        self, topic: str, message: str, attributes: Mapping[str, str] | None = None
    ) -> str:
        """Publish with `gcloud pubsub topics publish`, as an operator would; return its id."""
        args = ["pubsub", "topics", "publish", topic, f"--message={message}"]
        if attributes:
            args.append("--attribute=" + ",".join(f"{k}={v}" for k, v in attributes.items()))
        result = self.gcloud(*args)
        return str(json.loads(result.stdout)["messageIds"][0])

    # -- Pub/Sub ------------------------------------------------------------------------------
    def pull(
        self, subscription: str, max_messages: int = 100, ack: bool = True
    ) -> list[PulledMessage]:
        """Pull whatever is available now (no waiting) from a pull subscription."""
        url = (
            f"http://{self.env['PUBSUB_EMULATOR_HOST']}/v1/projects/{self.project}"
            f"/subscriptions/{subscription}"
        )
        response = requests.post(
            f"{url}:pull", json={"maxMessages": max_messages, "returnImmediately": True}, timeout=30
        )
        response.raise_for_status()
        received = response.json().get("receivedMessages", [])
        if ack and received:
            ack_ids = [r["ackId"] for r in received]
            requests.post(
                f"{url}:acknowledge", json={"ackIds": ack_ids}, timeout=30
            ).raise_for_status()
        import base64

        return [
            PulledMessage(
                data=base64.b64decode(r["message"].get("data", "")),
                attributes=dict(r["message"].get("attributes", {})),
                message_id=str(r["message"]["messageId"]),
            )
            for r in received
        ]

    def drain(self, subscriptions: Sequence[str]) -> None:
        for subscription in subscriptions:
            while self.pull(subscription):
                pass

    # -- collector, logs ----------------------------------------------------------------------
    def collector_requests(self) -> list[dict[str, Any]]:
        base = self.env["COLLECTOR_URL"].rsplit("/", 1)[0]
        response = requests.get(f"{base}/requests", timeout=10)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def collector_control(self, **plan: Any) -> dict[str, Any]:
        """Change how the collector stub behaves (``POST /control``, see emulators/collector)."""
        base = self.env["COLLECTOR_URL"].rsplit("/", 1)[0]
        response = requests.post(f"{base}/control", json=plan, timeout=10)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer

    def reset_collector_control(self) -> None:
        """The stub's defaults: succeed, report each outcome once, no ``started``."""
        self.collector_control(
            fail_count=0,
            report_outcomes=True,
            result_copies=1,
            shuffle_results=False,
            report_started=False,
        )

    def clear_collector(self) -> None:
        base = self.env["COLLECTOR_URL"].rsplit("/", 1)[0]
        requests.delete(f"{base}/requests", timeout=10).raise_for_status()

    def log(self, component: str) -> str:
        path: Path = self.stack.logs_dir / f"{component}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_lines(self, component: str) -> list[dict[str, Any]]:
        """The JSON lines of a component's log (other lines are skipped)."""
        lines = []
        for line in self.log(component).splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines

    # -- wiping state between tests -----------------------------------------------------------
    def wipe_firestore(self) -> None:
        url = (
            f"http://{self.env['FIRESTORE_EMULATOR_HOST']}/emulator/v1/projects/{self.project}"
            "/databases/(default)/documents"
        )
        requests.delete(url, timeout=30).raise_for_status()

    def wipe_ledger(self) -> None:
        import psycopg

        with psycopg.connect(self.env["DATABASE_URL"], autocommit=True) as conn:
            tables = [
                row[0]
                for row in conn.execute(
                    "select tablename from pg_tables where schemaname = 'public'"
                    " and tablename <> 'flyway_schema_history'"
                )
            ]
            if tables:
                conn.execute("truncate " + ", ".join(tables) + " restart identity cascade")


def dispatcher(stack: StackHandle, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run the operator's CLI against ``stack`` (``DISPATCHER_CLI`` overrides the command) and
    check its exit code; a traceback on stderr fails the test whatever the code."""
    command = shlex.split(os.environ.get("DISPATCHER_CLI", f"{sys.executable} -m shared.cli"))
    result = subprocess.run(
        [*command, *args],
        env={**os.environ, **stack.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == expect, (args, result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result
