"""A collector written as the docs show, served by functions-framework's own app."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import functions_framework
from flask import Flask

from emulators.cloudtasks.oidc import TokenSigner
from shared.auth import OidcVerifier
from shared.worker import WorkerConfig, WorkerDependencies
from tests.support.certs import CertServer
from tests.unit.worker.conftest import (
    SERVICE_ACCOUNT,
    TASK_NAME,
    FakePublisher,
    FakeSubscriptions,
    subscription,
    task_body,
)

# What the collector module below wires in instead of the real dependencies.
PUBLISHER = FakePublisher()
SUBSCRIPTIONS = FakeSubscriptions()
CERTS_URL: list[str] = []

SOURCE = """
import functions_framework

from shared.worker import CollectorTask, CollectResult, PermanentCollectError, task_handler
from tests.unit.worker import test_functions_framework as wiring


@functions_framework.http
@task_handler(wiring.config, dependencies=wiring.dependencies)
def collect(task: CollectorTask) -> CollectResult:
    if task.source.kind != "rss":
        raise PermanentCollectError(f"cannot collect {task.source.kind} sources")
    return CollectResult(items=len(task.source.params))
"""


def config() -> WorkerConfig:
    return WorkerConfig(project="p", service_account=SERVICE_ACCOUNT, certs_url=CERTS_URL[0])


def dependencies(config: WorkerConfig) -> WorkerDependencies:
    return WorkerDependencies(
        publisher=PUBLISHER, verifier=OidcVerifier(config.certs_url), subscriptions=SUBSCRIPTIONS
    )


def test_a_functions_framework_collector_reports_its_outcome(
    signer: TokenSigner, certs: CertServer, tmp_path: Path
) -> None:
    CERTS_URL[:] = [certs.url]
    SUBSCRIPTIONS.docs["acme-news"] = subscription()
    source = tmp_path / "main.py"
    source.write_text(SOURCE)
    create_app: Callable[[str, str, str], Flask] = functions_framework.create_app
    client = create_app("collect", str(source), "http").test_client()
    response = client.post(
        "/",
        data=json.dumps(task_body()),
        content_type="application/json",
        headers={
            "Authorization": f"Bearer {signer.token(SERVICE_ACCOUNT, 'http://localhost/')}",
            "X-CloudTasks-TaskName": TASK_NAME,
            "X-CloudTasks-TaskRetryCount": "0",
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [(p["outcome"], p["items"]) for p in PUBLISHER.payloads] == [("succeeded", 1)]
