"""Fakes and a real Flask app around the worker kit, with tokens signed like Cloud Tasks signs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import flask
import pytest
from flask.testing import FlaskClient

from emulators.cloudtasks.oidc import TokenSigner
from shared.auth import OidcVerifier
from shared.dal.records import OutboundMessage, StoredSubscription
from shared.dispatch_key import DispatchKey
from shared.errors import DependencyUnavailableError
from shared.worker import (
    CollectorTask,
    CollectResult,
    WorkerConfig,
    WorkerDependencies,
    task_handler,
)
from tests.support.certs import CertServer

SERVICE_ACCOUNT = "collector-invoker@dispatcher-test.iam.gserviceaccount.com"
URL = "http://localhost/collect"
SUBSCRIPTION = "acme-news"
SOURCE = "reuters-rss"
SLOT = "2026-01-05T09:00:00Z"
NOW = datetime(2026, 1, 5, 9, 0, 7, tzinfo=UTC)
TASK_NAME = "a3f9c2-acme-news-reuters-rss-20260105t0900z"


@pytest.fixture(scope="session")
def signer() -> TokenSigner:
    return TokenSigner()


@pytest.fixture(scope="session")
def certs(signer: TokenSigner) -> Iterator[CertServer]:
    server = CertServer(signer)
    yield server
    server.stop()


class FakePublisher:
    """Keeps what was published; ``failures`` makes the next publishes fail."""

    def __init__(self) -> None:
        self.messages: list[OutboundMessage] = []
        self.failures = 0

    def publish(self, message: OutboundMessage) -> str:
        if self.failures > 0:
            self.failures -= 1
            raise DependencyUnavailableError("pubsub", "404 Topic not found")
        self.messages.append(message)
        return str(len(self.messages))

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(m.data) for m in self.messages]


class FakeLedger:
    """Dispatch keys whose outcome is ``succeeded``; ``down`` makes every read fail."""

    def __init__(self) -> None:
        self.succeeded: set[tuple[str, str, str]] = set()
        self.down = False
        self.reads = 0

    def already_succeeded(self, key: DispatchKey) -> bool:
        self.reads += 1
        if self.down:
            raise DependencyUnavailableError("postgresql", "connection refused")
        return (key.subscription_id, key.slot_text, key.source_id) in self.succeeded


class FakeSubscriptions:
    """Subscription documents by id; ``down`` makes every read fail."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.down = False

    def get(self, subscription_id: str) -> StoredSubscription | None:
        if self.down:
            raise DependencyUnavailableError("firestore", "unavailable")
        data = self.docs.get(subscription_id)
        return None if data is None else StoredSubscription(subscription_id, data)


def subscription(**fields: Any) -> dict[str, Any]:
    """A valid subscription document holding the source the tasks name."""
    return {
        "name": "Acme brand mentions",
        "schedule": {"every": 300},
        "sources": [{"id": SOURCE, "kind": "rss", "params": {}}],
        **fields,
    }


def task_body(reason: str = "schedule", **changes: Any) -> dict[str, Any]:
    """A valid collector-task.v1 body for the test dispatch key."""
    body: dict[str, Any] = {
        "dispatch_key": {"subscription_id": SUBSCRIPTION, "slot": SLOT, "source_id": SOURCE},
        "source": {"id": SOURCE, "kind": "rss", "params": {"url": "https://example.com/f.xml"}},
        "subscription": {"id": SUBSCRIPTION, "name": "Acme brand mentions"},
        "slot": SLOT,
        "reason": reason,
        "task_name": TASK_NAME,
        "run_id": 42,
        "dispatched_at": "2026-01-05T09:00:00.125Z",
    }
    body.update(changes)
    return body


@dataclass
class Collector:
    """The collect function under test: records its calls, does what ``behaviour`` says."""

    calls: list[CollectorTask] = field(default_factory=list)
    behaviour: Callable[[CollectorTask], CollectResult | None] = lambda task: CollectResult(7)

    def __call__(self, task: CollectorTask) -> CollectResult | None:
        self.calls.append(task)
        return self.behaviour(task)


@dataclass
class Kit:
    """A Flask app serving the wrapped collect function, and every fake behind it."""

    client: FlaskClient
    signer: TokenSigner
    collector: Collector
    publisher: FakePublisher
    ledger: FakeLedger
    subscriptions: FakeSubscriptions
    configs: list[WorkerConfig]

    def post(
        self,
        body: Any = None,
        *,
        token: str | None = "valid",
        retry_count: int | None = 0,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        sent: dict[str, str] = {
            "X-CloudTasks-TaskName": TASK_NAME,
            "X-CloudTasks-QueueName": "collect-rss",
            "X-CloudTasks-TaskExecutionCount": "0",
            "X-CloudTasks-TaskETA": "1767603600.125",
        }
        if retry_count is not None:
            sent["X-CloudTasks-TaskRetryCount"] = str(retry_count)
        if token == "valid":
            sent["Authorization"] = f"Bearer {self.signer.token(SERVICE_ACCOUNT, URL)}"
        elif token is not None:
            sent["Authorization"] = token
        sent.update(headers or {})
        data = raw if raw is not None else json.dumps(task_body() if body is None else body)
        return self.client.post(
            "/collect", data=data, headers=sent, content_type="application/json"
        )


def make_kit(signer: TokenSigner, certs_url: str, *, report_started: bool = False) -> Kit:
    collector = Collector()
    publisher = FakePublisher()
    ledger = FakeLedger()
    subscriptions = FakeSubscriptions()
    subscriptions.docs[SUBSCRIPTION] = subscription()
    configs: list[WorkerConfig] = []

    def config() -> WorkerConfig:
        built = WorkerConfig(
            project="dispatcher-test",
            service_account=SERVICE_ACCOUNT,
            certs_url=certs_url,
            report_started=report_started,
        )
        configs.append(built)
        return built

    def dependencies(config: WorkerConfig) -> WorkerDependencies:
        return WorkerDependencies(
            publisher=publisher,
            verifier=OidcVerifier(config.certs_url),
            ledger=ledger,
            subscriptions=subscriptions,
            clock=lambda: NOW,
        )

    handler = task_handler(config, dependencies=dependencies)(collector)
    app = flask.Flask(__name__)
    app.add_url_rule("/collect", "collect", lambda: handler(flask.request), methods=["POST"])
    return Kit(app.test_client(), signer, collector, publisher, ledger, subscriptions, configs)


@pytest.fixture
def kit(signer: TokenSigner, certs: CertServer) -> Kit:
    return make_kit(signer, certs.url)
