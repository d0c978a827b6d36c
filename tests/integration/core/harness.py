"""Driving select and fanout in-process against the real emulators and PostgreSQL.

``Core`` builds the use cases' real adapters on the stack (Firestore emulator, Pub/Sub emulator,
Cloud Tasks emulator, the ledger database), publishes ticks' due messages through a real Pub/Sub
topic and pulls them from a test pull subscription, then runs fanout on each;
the Cloud Tasks emulator dispatches the tasks to the collector stub, whose records are the
oracle together with the ledger.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import requests
from google.api_core import exceptions as gexc

from shared.clients import build_tasks_client
from shared.config import Settings, load_settings
from shared.dal.cloud_tasks import CloudTasksGateway
from shared.dal.firestore_store import FirestoreSubscriptionStore
from shared.dal.ledger_gateway import LedgerGateway
from shared.dal.pubsub_publisher import PubSubPublisher
from shared.dal.records import StoredSubscription
from shared.envelope import PushMessage
from shared.ledger.repository import Ledger, open_pool
from shared.usecases.fanout import FanoutDependencies, FanoutResult, fanout
from shared.usecases.select_due import SelectDependencies, SelectResult, select_due
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

# select publishes to a test topic with the same contract as dispatcher-due: the functions'
# push subscription on dispatcher-due would otherwise fan the same messages out a second time
# and, once a test wiped Firestore, dead-letter them into the next test's view. The push path is
# covered end to end by tests/e2e/test_pipeline.py.
DUE_TOPIC = "core-due-test"
DUE_PULL = "core-due-test-pull"
Key = tuple[str, str, str]


class CountingStore(FirestoreSubscriptionStore):
    """The real store, counting every document the due query streams and every get."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lock = threading.Lock()
        self.query_reads = 0
        self.queries = 0
        self.gets = 0

    def reset(self) -> None:
        with self.lock:
            self.query_reads = self.queries = self.gets = 0

    def _stream(self, query: Any) -> Any:
        with self.lock:
            self.queries += 1
        for snapshot in super()._stream(query):
            with self.lock:
                self.query_reads += 1
            yield snapshot

    def get(self, subscription_id: str) -> StoredSubscription | None:
        with self.lock:
            self.gets += 1
        return super().get(subscription_id)


def _rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Core:
    """select and fanout wired to the stack; see the module docstring."""

    def __init__(self, stack: StackHandle) -> None:
        import google.cloud.pubsub_v1 as pubsub_v1
        from google.cloud import firestore

        self.stack = stack
        self.settings: Settings = load_settings(environ=stack.env)
        self.firestore = firestore.Client(project=self.settings.project)
        self.store = CountingStore(lambda: self.firestore)
        batch = pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01)
        self.publisher_client = pubsub_v1.PublisherClient(batch_settings=batch)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.tasks_client = build_tasks_client(self.settings.cloud_tasks_emulator_host)
        database_url = stack.env["DATABASE_URL"]
        self.pool = open_pool(database_url, min_size=1, max_size=12)
        self.ledger = Ledger(self.pool)
        self.select_deps = SelectDependencies(
            settings=self.settings,
            store=self.store,
            publisher=PubSubPublisher(
                lambda: self.publisher_client,
                self.settings.topic_path(DUE_TOPIC),
                timeout=30.0,
                direct=True,  # as select's wiring publishes
            ),
        )
        self.fanout_deps = FanoutDependencies(
            settings=self.settings,
            store=self.store,
            tasks=CloudTasksGateway(lambda: self.tasks_client),
            ledger=LedgerGateway(lambda: self.ledger),
        )
        self._last_seen = 0
        self.timings: dict[str, float] = {"select": 0.0, "fanout": 0.0}
        self.due_subscription = self.subscriber.subscription_path(self.settings.project, DUE_PULL)
        with contextlib.suppress(gexc.AlreadyExists):
            self.publisher_client.create_topic(name=self.settings.topic_path(DUE_TOPIC))
        with contextlib.suppress(gexc.AlreadyExists):
            self.subscriber.create_subscription(
                request={
                    "name": self.due_subscription,
                    "topic": self.settings.topic_path(DUE_TOPIC),
                    "ack_deadline_seconds": 60,
                }
            )

    def close(self) -> None:
        self.pool.close()
        self.subscriber.close()
        self.publisher_client.transport.close()
        self.firestore.close()  # type: ignore[no-untyped-call]

    # -- seeding ---------------------------------------------------------------------------------

    def seed(self, docs: Mapping[str, Mapping[str, Any]], *, workers: int = 8) -> None:
        """Write documents with concurrent WriteBatch commits of 500."""
        items = list(docs.items())
        chunks = [items[i : i + 500] for i in range(0, len(items), 500)]

        def commit(chunk: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
            batch = self.firestore.batch()
            for doc_id, data in chunk:
                batch.set(self.firestore.collection("subscriptions").document(doc_id), dict(data))
            batch.commit(timeout=60)

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(commit, chunks))

    def document(self, doc_id: str) -> dict[str, Any]:
        snapshot = self.firestore.collection("subscriptions").document(doc_id).get()
        assert snapshot.exists, doc_id
        return snapshot.to_dict() or {}

    # -- select ----------------------------------------------------------------------------------

    def tick(self, at: datetime, *, message_id: str = "tick", **payload: Any) -> SelectResult:
        """Run select for a tick with an explicit time (as a scheduler job or a replay sends)."""
        message = PushMessage(data=b"{}", attributes={}, message_id=message_id)
        return select_due({"time": _rfc3339(at), **payload}, message, deps=self.select_deps)

    def _pull(self) -> Any:
        with warnings.catch_warnings():
            # return_immediately is deprecated for production; the emulator honours it, and a
            # test wants "what is there now" rather than a long poll.
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.subscriber.pull(
                request={
                    "subscription": self.due_subscription,
                    "max_messages": 1000,
                    "return_immediately": True,
                },
                timeout=10,
            )

    def pull_due(self, expected: int, timeout: float = 30.0) -> list[tuple[dict[str, Any], str]]:
        """Pull (and ack) exactly ``expected`` due messages from the test subscription."""
        got: list[tuple[dict[str, Any], str]] = []

        def more() -> bool:
            if len(got) < expected:
                response = self._pull()
                if response.received_messages:
                    self.subscriber.acknowledge(
                        request={
                            "subscription": self.due_subscription,
                            "ack_ids": [r.ack_id for r in response.received_messages],
                        }
                    )
                for received in response.received_messages:
                    got.append((json.loads(received.message.data), received.message.message_id))
            return len(got) >= expected

        wait_for(more, timeout, interval=0.05, message=f"{expected} due messages")
        assert len(got) == expected, f"pulled {len(got)} due messages, expected {expected}"
        return got

    def drain_due(self) -> None:
        """Drop whatever is waiting on the test subscription (isolation between tests)."""
        while True:
            response = self._pull()
            if not response.received_messages:
                return
            self.subscriber.acknowledge(
                request={
                    "subscription": self.due_subscription,
                    "ack_ids": [r.ack_id for r in response.received_messages],
                }
            )

    # -- fanout ----------------------------------------------------------------------------------

    def fan_out(
        self,
        messages: Iterable[tuple[dict[str, Any], str]],
        *,
        deliveries: int = 1,
        workers: int = 8,
    ) -> list[FanoutResult]:
        """Run fanout for every message, each delivered ``deliveries`` times, concurrently."""
        jobs = [m for m in messages for _ in range(deliveries)]

        def one(job: tuple[dict[str, Any], str]) -> FanoutResult:
            payload, message_id = job
            message = PushMessage(
                data=json.dumps(payload).encode(), attributes={}, message_id=message_id
            )
            return fanout(payload, message, deps=self.fanout_deps)

        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, jobs))

    def run_ticks(self, times: Iterable[datetime], **payload: Any) -> int:
        """Tick at each time, fanning out each tick's due messages; returns the due count."""
        total = 0
        for at in times:
            began = time.monotonic()
            result = self.tick(at, **payload)
            middle = time.monotonic()
            if result.published:
                self.fan_out(self.pull_due(result.published))
            self.timings["select"] += middle - began
            self.timings["fanout"] += time.monotonic() - middle
            total += result.published
        return total

    # -- oracles ---------------------------------------------------------------------------------

    def queues_idle(self) -> bool:
        base = self.stack.env["CLOUD_TASKS_EMULATOR_HTTP"]
        stats = requests.get(f"{base}/queues", timeout=10).json()["queues"]
        return all(q["tasks"] == 0 and q["in_flight"] == 0 for q in stats)

    def collected(self, prefix: str, expected: int, timeout: float = 30.0) -> list[Key]:
        """The dispatch keys the collector received for ids starting with ``prefix``, once the
        expected number arrived and the Cloud Tasks emulator holds nothing more to send."""

        def keys() -> list[Key]:
            out = []
            for record in self.stack.collector_requests():
                body = record.get("body")
                # Other modules share the session stack's collector: count only dispatches.
                key = body.get("dispatch_key") if isinstance(body, dict) else None
                if not isinstance(key, dict):
                    continue
                if key["subscription_id"].startswith(prefix):
                    out.append((key["subscription_id"], key["slot"], key["source_id"]))
            return out

        def arrived() -> bool:
            self._last_seen = len(keys())
            return self._last_seen >= expected and self.queues_idle()

        try:
            wait_for(arrived, timeout, interval=0.2, message=f"{expected} tasks at the collector")
        except AssertionError:
            # Fall through with what did arrive: the caller's comparison names what is missing.
            if not self.queues_idle():
                raise
        return keys()

    def ledger_rows(self, prefix: str) -> list[tuple[Key, str]]:
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT subscription_id, slot, source_id, state FROM dispatches "
                "WHERE subscription_id LIKE %s",
                (prefix + "%",),
            ).fetchall()
        return [((r[0], _rfc3339(r[1]), r[2]), r[3]) for r in rows]
