"""The collector stub verifies Cloud Tasks OIDC tokens, as a production collector must."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.clients import build_tasks_client
from shared.config import load_settings
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

pytestmark = pytest.mark.e2e


def _task_path(stack: StackHandle, task_id: str) -> str:
    return f"{load_settings(environ=stack.env).queue_path('rss')}/tasks/{task_id}"


def _send_task(stack: StackHandle, service_account: str) -> str:
    settings = load_settings(environ=stack.env)
    client = build_tasks_client(stack.env["CLOUD_TASKS_EMULATOR_HOST"])
    task_id = f"auth-{uuid.uuid4().hex}"
    client.create_task(
        request={
            "parent": settings.queue_path("rss"),
            "task": {
                "name": f"{settings.queue_path('rss')}/tasks/{task_id}",
                "http_request": {
                    "url": stack.env["COLLECTOR_URL"],
                    "http_method": "POST",
                    "body": _task_body(task_id),
                    "oidc_token": {"service_account_email": service_account},
                },
            },
        }
    )
    return task_id


def _task_body(task_id: str) -> bytes:
    # A valid task for a subscription that does not exist: the stub executes it through the
    # worker kit, which re-reads the subscription and answers 200 with outcome "skipped".
    slot = datetime.now(UTC).replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = {"subscription_id": "auth-check", "slot": slot, "source_id": "feed"}
    body = {
        "dispatch_key": key,
        "source": {"id": "feed", "kind": "rss", "params": {}},
        "subscription": {"id": "auth-check", "name": "OIDC check"},
        "slot": slot,
        "reason": "manual",
        "task_name": task_id,
        "dispatched_at": slot,
    }
    return json.dumps(body).encode()


def _record_for(stack: StackHandle, task_id: str) -> dict[str, Any] | None:
    for record in stack.collector_requests():
        if record["headers"].get("x-cloudtasks-taskname") == task_id:
            return record
    return None


def test_a_task_token_for_the_collector_identity_is_accepted(stack: StackHandle) -> None:
    expected = load_settings(environ=stack.env).collector_service_account
    task_id = _send_task(stack, expected)
    record = wait_for(lambda: _record_for(stack, task_id), timeout=30, message="the task")
    assert record["auth"] == {"verified": True, "email": expected}
    assert record["status"] == 200
    assert record["outcome"] == "skipped"  # the subscription was re-read: it does not exist


def test_a_task_token_for_another_identity_is_refused(stack: StackHandle) -> None:
    task_id = _send_task(stack, "intruder@dispatcher-local.iam.gserviceaccount.com")
    record = wait_for(lambda: _record_for(stack, task_id), timeout=30, message="the task")
    # A refused task is retried by the queue: delete it so it does not visit later tests.
    client = build_tasks_client(stack.env["CLOUD_TASKS_EMULATOR_HOST"])
    client.delete_task(request={"name": _task_path(stack, task_id)})
    assert record["auth"]["verified"] is False
    assert "intruder@" in record["auth"]["reason"]
    assert record["status"] == 401
