"""Shared wiring for the contract tests: recording fakes and fixed routes, reset per test."""

from __future__ import annotations

import base64
import functools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared import handler
from shared.handler import Route
from tests.unit.contracts.recorder import DEAD_LETTERS, USE_CASES

EVENTS = Path(__file__).resolve().parents[2] / "events"
FUNCTIONS_FILE = Path(__file__).with_name("functions_under_test.py")
#: Small on purpose so the size limit is cheap to reach in tests.
TEST_MAX_PAYLOAD_BYTES = 4096
TOPIC_SCHEMAS = {
    "dispatcher-ticks": ("select", "tick.v1.json"),
    "dispatcher-due": ("fanout", "due.v1.json"),
    "dispatcher-maintenance": ("maintenance", "maintenance.v1.json"),
    "dispatcher-sync": ("sync", "sync.v1.json"),
}
CE_TARGETS = {
    "dispatcher-ticks": "ce_select",
    "dispatcher-due": "ce_fanout",
    "dispatcher-maintenance": "ce_maintenance",
    "dispatcher-sync": "ce_sync",
}


def fixed_route(topic: str, function: str) -> Route:
    expected_function, schema = TOPIC_SCHEMAS[topic]
    assert function == expected_function
    return Route(
        topic=topic,
        function=function,
        schema=schema,
        dead_letter_topic=f"{topic}-dlq",
        max_payload_bytes=TEST_MAX_PAYLOAD_BYTES,
    )


def install_fakes() -> None:
    """Point the handler at the recording fakes and forget earlier calls."""
    handler.set_dead_letter_publisher(DEAD_LETTERS)
    handler.set_route_resolver(fixed_route)
    DEAD_LETTERS.reset()
    USE_CASES.reset()


@pytest.fixture(autouse=True)
def _fakes() -> Iterator[None]:
    install_fakes()
    yield
    handler.set_dead_letter_publisher(None)
    handler.set_route_resolver(None)


@functools.cache
def client(target: str, source: Path = FUNCTIONS_FILE) -> FlaskClient:
    """A functions-framework test client for ``target`` in ``source`` (default: the test-only
    function file; pass ``functions/<name>/main.py`` to drive a real function)."""
    create_app: Callable[[str, str], Flask] = functions_framework.create_app
    return create_app(target, str(source)).test_client()


def push_body(
    data: bytes | None,
    *,
    attributes: dict[str, str] | None = None,
    message_id: str = "1001",
    delivery_attempt: int | None = None,
    subscription: str = "projects/dispatcher-local/subscriptions/test-push",
) -> dict[str, Any]:
    """A push request body exactly as the Pub/Sub emulator sends it (plus deliveryAttempt)."""
    message: dict[str, Any] = {
        "attributes": attributes if attributes is not None else {"origin": "test"},
        "messageId": message_id,
        "message_id": message_id,
        "publishTime": "2026-01-05T09:00:00.123Z",
        "publish_time": "2026-01-05T09:00:00.123Z",
    }
    if data is not None:
        message["data"] = base64.b64encode(data).decode("ascii")
    body: dict[str, Any] = {"message": message, "subscription": subscription}
    if delivery_attempt is not None:
        body["deliveryAttempt"] = delivery_attempt
    return body


def load_event(*parts: str) -> Any:
    return json.loads(EVENTS.joinpath(*parts).read_text(encoding="utf-8"))
