"""The local collector stub, rebuilt on the worker kit: its records, controls and outcomes."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.cloudtasks.oidc import TokenSigner
from emulators.collector import serve
from shared.auth import OidcVerifier
from shared.worker import WorkerDependencies
from tests.support.certs import CertServer
from tests.unit.worker.conftest import (
    SERVICE_ACCOUNT,
    SUBSCRIPTION,
    TASK_NAME,
    FakePublisher,
    FakeSubscriptions,
    subscription,
    task_body,
)


@dataclass
class Stub:
    base: str
    signer: TokenSigner
    publisher: FakePublisher
    subscriptions: FakeSubscriptions
    record_file: Path

    def send(
        self, body: Any = None, *, identity: str = SERVICE_ACCOUNT, retry_count: int = 0
    ) -> requests.Response:
        url = f"{self.base}/collect"
        return requests.post(
            url,
            data=json.dumps(task_body() if body is None else body),
            headers={
                "Authorization": f"Bearer {self.signer.token(identity, url)}",
                "Content-Type": "application/json",
                "X-CloudTasks-TaskName": TASK_NAME,
                "X-CloudTasks-QueueName": "collect-rss",
                "X-CloudTasks-TaskRetryCount": str(retry_count),
            },
            timeout=10,
        )

    def control(self, **plan: Any) -> requests.Response:
        return requests.post(f"{self.base}/control", json=plan, timeout=10)

    def records(self) -> list[dict[str, Any]]:
        response = requests.get(f"{self.base}/requests", timeout=10)
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records


@pytest.fixture
def stub(signer: TokenSigner, certs: CertServer, tmp_path: Path) -> Iterator[Stub]:
    publisher = FakePublisher()
    subscriptions = FakeSubscriptions()
    subscriptions.docs[SUBSCRIPTION] = subscription()
    record_file = tmp_path / "collector.jsonl"
    server = serve(
        "127.0.0.1",
        0,
        record_file,
        certs.url,
        SERVICE_ACCOUNT,
        environ={},
        dependencies=WorkerDependencies(
            publisher=publisher, verifier=OidcVerifier(certs.url), subscriptions=subscriptions
        ),
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Stub(
            f"http://127.0.0.1:{server.server_port}", signer, publisher, subscriptions, record_file
        )
    finally:
        server.shutdown()
        server.server_close()


def test_a_task_is_recorded_as_before_and_its_outcome_published(stub: Stub) -> None:
    assert requests.get(f"{stub.base}/healthz", timeout=10).json() == {"status": "ok"}
    assert stub.send().status_code == 200
    (record,) = stub.records()
    assert record["method"] == "POST" and record["path"] == "/collect"
    assert record["headers"]["x-cloudtasks-taskname"] == TASK_NAME
    assert record["headers"]["authorization"].startswith("Bearer ")
    assert record["body"] == task_body()
    assert record["auth"] == {"verified": True, "email": SERVICE_ACCOUNT}
    assert (record["status"], record["decision"], record["outcome"]) == (
        200,
        "succeeded",
        "succeeded",
    )
    assert "received_at" in record
    assert [json.loads(line) for line in stub.record_file.read_text().splitlines()] == [record]
    assert [p["outcome"] for p in stub.publisher.payloads] == ["succeeded"]
    assert requests.delete(f"{stub.base}/requests", timeout=10).json() == {"cleared": True}
    assert stub.records() == [] and stub.record_file.read_text() == ""


def test_a_token_for_another_identity_is_refused_and_recorded(stub: Stub) -> None:
    assert stub.send(identity="intruder@x.iam.gserviceaccount.com").status_code == 401
    (record,) = stub.records()
    assert record["status"] == 401 and record["auth"]["verified"] is False
    assert "intruder@" in record["auth"]["reason"]
    assert stub.publisher.messages == []


def test_an_injected_failure_is_answered_and_reported_failed(stub: Stub) -> None:
    assert stub.control(fail_status=503, fail_count=1).json()["fail_remaining"] == 1
    assert stub.send().status_code == 503
    assert stub.send(retry_count=1).status_code == 200
    assert [r["status"] for r in stub.records()] == [503, 200]
    assert [(p["outcome"], p["attempt"]) for p in stub.publisher.payloads] == [
        ("failed", 1),
        ("succeeded", 2),
    ]


def test_a_task_of_a_deleted_subscription_is_skipped(stub: Stub) -> None:
    stub.subscriptions.docs.clear()
    assert stub.send().status_code == 200
    assert [r["outcome"] for r in stub.records()] == ["skipped"]


def test_outcomes_can_be_lost_on_purpose(stub: Stub) -> None:
    stub.control(report_outcomes=False)
    assert stub.send().status_code == 200
    assert stub.records()[0]["outcome"] == "succeeded"
    assert stub.publisher.messages == []


def test_outcomes_can_be_published_several_times(stub: Stub) -> None:
    stub.control(result_copies=3)
    stub.send()
    assert [p["outcome"] for p in stub.publisher.payloads] == ["succeeded"] * 3


def test_started_is_published_only_when_asked(stub: Stub) -> None:
    stub.control(report_started=True)
    stub.send()
    stub.control(report_started=False)
    stub.send()
    assert [p["outcome"] for p in stub.publisher.payloads] == ["started", "succeeded", "succeeded"]


def test_shuffled_results_interleave_copies_and_can_put_the_final_outcome_first(
    stub: Stub,
) -> None:
    stub.control(report_started=True, shuffle_results=True, result_copies=2)
    random.seed(7)
    orders = []
    for attempt in range(8):
        stub.publisher.messages.clear()
        assert stub.send(retry_count=attempt).status_code == 200
        outcomes = [p["outcome"] for p in stub.publisher.payloads]
        assert sorted(outcomes) == ["started", "started", "succeeded", "succeeded"]
        assert {p["attempt"] for p in stub.publisher.payloads} == {attempt + 1}
        orders.append(tuple(outcomes))
    assert any(order[0] == "succeeded" for order in orders)
    assert len(set(orders)) > 1


@pytest.mark.parametrize(
    "plan",
    [
        {"fail_status": 200, "fail_count": 1},
        {"result_copies": 0},
        {"report_outcomes": "no"},
        {"x": 1},
    ],
)
def test_a_control_it_cannot_follow_is_refused(stub: Stub, plan: dict[str, Any]) -> None:
    response = stub.control(**plan)
    assert response.status_code == 400 and "error" in response.json()
