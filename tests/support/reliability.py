"""A private local stack for fault tests and benchmarks, with the oracles they count with.

:class:`FaultStack` starts its own :class:`~emulators.stack.LocalStack` (no scheduler stand-in),
raises the Cloud Tasks queues' rates so thousands of tasks reach the collector in seconds, and
offers what the reliability tests and ``bench/`` need: concurrent seeding, publishing through the
real topics (so the real push subscriptions deliver to the real functions), the collector's
records read from its record file, the ledger's dispatch rows, the dead letters, and ``kill -9``
of a component's whole process group followed by a restart on the same port.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import requests

from emulators.process import pid_alive
from emulators.stack import LocalStack, StackOptions, read_record, stop_recorded
from shared.config import Settings, load_settings
from shared.topology import load_topology
from tests.support.core import emulator_environment
from tests.support.polling import wait_for
from tests.support.stack import StackHandle, dispatcher

Key = tuple[str, str, str]

# Production's per-kind rates (5-50/s) would make a 1,000-task oracle wait minutes.
FAST_RATE = 500.0
FAST_CONCURRENCY = 200


def rfc3339(value: datetime) -> str:
    """``2026-01-05T09:00:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _retry_budget_floor(topic: str) -> float:
    """The least time the local stack's push retries take to exhaust a topic's delivery attempts.

    Every retry waits at least ``local.retry.min_backoff`` (the first attempt is the one the
    killed function died in). A function down longer than this may see its messages
    dead-lettered locally; production's 10 s+ backoff gives it far longer.
    """
    topology = load_topology()
    attempts = next(t for t in topology.topics if t.name == topic).push.max_delivery_attempts
    return float(topology.local_retry.min_backoff_seconds * (attempts - 1))


@dataclass(frozen=True)
class DeadLetter:
    """One message pulled from a ``<topic>-dlq-sub``."""

    data: bytes
    attributes: dict[str, str]
    message_id: str


class FaultStack:
    """A whole local stack of real parts, owned by one test module or benchmark."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.local = LocalStack(StackOptions(state_dir=state_dir, scheduler=False))
        self.env = self.local.up()
        try:
            self.handle = StackHandle(self.local, self.env)
            self.settings: Settings = load_settings(environ=self.env)
            with emulator_environment(self.env):
                import google.cloud.pubsub_v1 as pubsub_v1
                from google.cloud import firestore

                self.firestore = firestore.Client(project=self.settings.project)
                batch = pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01)
                self.publisher = pubsub_v1.PublisherClient(batch_settings=batch)
            self.speed_up_queues()
        except BaseException:
            self.close()
            raise

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every component; fail if any process survived."""
        record = read_record(self.state_dir) or {}
        pids = [int(c["pid"]) for c in record.get("components", {}).values()]
        stop_recorded(self.state_dir)
        survivors = [p for p in pids if pid_alive(p)]
        assert not survivors, f"stack processes survived teardown: {survivors}"

    def speed_up_queues(self, rate: float = FAST_RATE) -> None:
        """Raise every queue's dispatch rate (the emulator enforces production's limits)."""
        from google.protobuf import field_mask_pb2

        from shared.clients import build_tasks_client

        client = build_tasks_client(self.settings.cloud_tasks_emulator_host)
        for queue in self.settings.queues.values():
            client.update_queue(
                request={
                    "queue": {
                        "name": self.settings.queue_path(queue.kind),
                        "rate_limits": {
                            "max_dispatches_per_second": rate,
                            "max_concurrent_dispatches": FAST_CONCURRENCY,
                        },
                    },
                    "update_mask": field_mask_pb2.FieldMask(
                        paths=[
                            "rate_limits.max_dispatches_per_second",
                            "rate_limits.max_concurrent_dispatches",
                        ]
                    ),
                }
            )

    def wipe(self) -> None:
        """Empty Firestore, the ledger, the collector and the dead-letter subscriptions."""
        self.handle.wipe_firestore()
        self.handle.wipe_ledger()
        self.handle.clear_collector()
        self.handle.drain(["dispatcher-due-dlq-sub", "dispatcher-ticks-dlq-sub"])

    # -- faults ----------------------------------------------------------------------------------

    def kill9(self, component: str) -> int:
        """SIGKILL the component's whole process group (no cleanup of any kind); return its pid."""
        process = self.local.processes[component]
        pid = process.pid
        os.killpg(pid, signal.SIGKILL)
        if process.popen is not None:
            process.popen.wait(timeout=10)
        return pid

    def restart(self, component: str) -> float:
        """Start the component again on its port; return the seconds until it was ready."""
        began = time.monotonic()
        self.local.restart_component(component)
        return time.monotonic() - began

    # -- writing ---------------------------------------------------------------------------------

    def seed(self, docs: Mapping[str, Mapping[str, Any]], *, workers: int = 8) -> float:
        """Write documents with concurrent WriteBatch commits of 500; return docs per second."""
        items = list(docs.items())
        chunks = [items[i : i + 500] for i in range(0, len(items), 500)]
        collection = self.firestore.collection("subscriptions")

        def commit(chunk: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
            batch = self.firestore.batch()
            for doc_id, data in chunk:
                batch.set(collection.document(doc_id), dict(data))
            batch.commit(timeout=120)

        began = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(commit, chunks))
        return len(items) / max(time.monotonic() - began, 1e-9)

    def seed_due(
        self,
        prefix: str,
        count: int,
        slot: datetime,
        sources: Sequence[Mapping[str, Any]] | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Seed ``count`` subscriptions due at ``slot`` (every 5 min, no jitter); return them."""
        from tests.support.core import subscription_doc

        docs = {
            f"{prefix}{i:04d}": subscription_doc(
                f"{prefix}{i:04d}",
                schedule={"every": 300},
                start=slot,
                shard_count=self.settings.shard_count,
                sources=[dict(s) for s in sources] if sources else None,
                jitter_seconds=0,
            )
            for i in range(count)
        }
        self.seed(docs)
        return docs

    def due_messages(
        self, subscription_ids: Iterable[str], slot: datetime
    ) -> list[tuple[bytes, dict[str, str]]]:
        """The due messages select publishes for these subscriptions at ``slot``."""
        return [
            (
                json.dumps(
                    {"subscription_id": sid, "slot": rfc3339(slot), "reason": "schedule"}
                ).encode(),
                {"redelivery": "test"},
            )
            for sid in subscription_ids
        ]

    def wait_settled(self, prefix: str, timeout: float = 60.0) -> None:
        """Wait until nothing moves: queues idle, ledger row count unchanged over 3 polls."""
        seen: list[int] = []

        def still() -> bool:
            seen.append(len(self.ledger_rows(prefix)))
            return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] and self.queues_idle()

        wait_for(still, timeout, interval=1.0, message="the stack settled")

    def publish(
        self,
        topic: str,
        messages: Iterable[tuple[bytes, Mapping[str, str]]],
    ) -> list[str]:
        """Publish through the real topic (its push subscription delivers); return the ids."""
        path = self.settings.topic_path(topic)
        futures = [self.publisher.publish(path, data, **dict(attrs)) for data, attrs in messages]
        return [str(f.result(timeout=60)) for f in futures]

    def replay_retry_exhausted(self, topic: str, down_seconds: float) -> int:
        """Replay ``topic``'s dead letters the operator's way (``dispatcher dlq replay``) and
        return how many there were. They are acceptable only when the function was down longer
        than the local retry budget: a dead letter while it was up fails here."""
        replayed = json.loads(
            dispatcher(self.handle, "dlq", "replay", "--topic", topic, "--json").stdout
        )["replayed"]
        if replayed:
            assert down_seconds >= _retry_budget_floor(topic), (
                f"{len(replayed)} {topic} message(s) dead-lettered although the function was "
                f"down only {down_seconds:.1f}s"
            )
        return len(replayed)

    # -- oracles ---------------------------------------------------------------------------------

    def collector_records(self) -> list[dict[str, Any]]:
        """Every request the collector stub recorded (its record file; a torn last line is
        skipped, it is read again on the next poll)."""
        records = []
        for line in self.local.collector_records.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def collected(self, prefix: str) -> Counter[Key]:
        """How often each dispatch key whose subscription id starts with ``prefix`` arrived."""
        keys: Counter[Key] = Counter()
        for record in self.collector_records():
            body = record.get("body")
            if isinstance(body, dict) and record.get("status") == 200:
                key = body["dispatch_key"]
                if key["subscription_id"].startswith(prefix):
                    keys[(key["subscription_id"], key["slot"], key["source_id"])] += 1
        return keys

    def ledger_rows(self, prefix: str) -> list[tuple[Key, str]]:
        """(dispatch key, state) of every ledger dispatch row of ``prefix``'s subscriptions."""
        with psycopg.connect(self.env["DATABASE_URL"]) as conn:
            rows = conn.execute(
                "SELECT subscription_id, slot, source_id, state FROM dispatches "
                "WHERE subscription_id LIKE %s",
                (prefix + "%",),
            ).fetchall()
        return [((str(r[0]), rfc3339(r[1]), str(r[2])), str(r[3])) for r in rows]

    def queues_idle(self) -> bool:
        """The Cloud Tasks emulator holds no task and has none in flight."""
        base = self.env["CLOUD_TASKS_EMULATOR_HTTP"]
        stats = requests.get(f"{base}/queues", timeout=10).json()["queues"]
        return all(q["tasks"] == 0 and q["in_flight"] == 0 for q in stats)

    def pull_dead_letters(self, subscription: str = "dispatcher-due-dlq-sub") -> list[DeadLetter]:
        """Pull (and ack) whatever is waiting on a dead-letter subscription now."""
        url = (
            f"http://{self.env['PUBSUB_EMULATOR_HOST']}/v1/projects/{self.settings.project}"
            f"/subscriptions/{subscription}"
        )
        out: list[DeadLetter] = []
        while True:
            response = requests.post(
                f"{url}:pull", json={"maxMessages": 1000, "returnImmediately": True}, timeout=30
            )
            response.raise_for_status()
            received = response.json().get("receivedMessages", [])
            if not received:
                return out
            requests.post(
                f"{url}:acknowledge", json={"ackIds": [r["ackId"] for r in received]}, timeout=30
            ).raise_for_status()
            out.extend(
                DeadLetter(
                    data=base64.b64decode(r["message"].get("data", "")),
                    attributes=dict(r["message"].get("attributes", {})),
                    message_id=str(r["message"]["messageId"]),
                )
                for r in received
            )

    def wait_collected(
        self, prefix: str, expected: int, timeout: float, what: str = ""
    ) -> Counter[Key]:
        """Wait until ``expected`` distinct keys arrived and the queues are idle; return the
        counts (a timeout fails with the functions' log tails, the first place to look)."""

        def done() -> bool:
            return len(self.collected(prefix)) >= expected and self.queues_idle()

        try:
            wait_for(done, timeout, interval=0.5, message=what or f"{expected} tasks collected")
        except AssertionError as exc:
            tails = "".join(
                f"\n--- {c} ---\n{self.handle.log(c)[-2500:]}" for c in ("fn-select", "fn-fanout")
            )
            got = len(self.collected(prefix))
            raise AssertionError(f"{exc}; {got}/{expected} distinct keys arrived{tails}") from None
        return self.collected(prefix)

    def wait_ledger_created(self, prefix: str, expected: int, timeout: float) -> list[Key]:
        """Wait until ``expected`` dispatch rows are ``created``; return every row's key."""

        def done() -> bool:
            rows = self.ledger_rows(prefix)
            return len(rows) >= expected and all(state == "created" for _, state in rows)

        try:
            wait_for(done, timeout, interval=0.5, message=f"{expected} created ledger rows")
        except AssertionError as exc:
            states = Counter(state for _, state in self.ledger_rows(prefix))
            raise AssertionError(f"{exc}; ledger states: {dict(states)}") from None
        return [key for key, _ in self.ledger_rows(prefix)]
