"""Acceptance for dead letters, end to end on the stack, driving the real ``dispatcher`` CLI.

The CLI runs as a subprocess (``python -m shared.cli``, or the command in ``DISPATCHER_CLI``),
with the stack's environment, exactly as an operator would after ``source .dispatcher/stack.env``.
"""

from __future__ import annotations

import base64
import json
from typing import Any, TypeVar

import pytest
import requests

from tests.support.polling import wait_for
from tests.support.stack import StackHandle, dispatcher

pytestmark = pytest.mark.e2e

SLOT = "2026-01-05T09:00:00Z"
SUB = "ghost-sub"
T = TypeVar("T")


def dead_letters(stack: StackHandle, *args: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(dispatcher(stack, "dlq", "list", "--json", *args).stdout)
    return out


@pytest.fixture(autouse=True)
def clean(stack: StackHandle) -> None:
    stack.wipe_firestore()
    stack.wipe_ledger()
    stack.clear_collector()
    stack.drain(["dispatcher-due-dlq-sub"])


def test_dead_letter_round_trip(stack: StackHandle) -> None:
    due = json.dumps({"subscription_id": SUB, "slot": SLOT, "reason": "manual"})
    # Published twice (a duplicate, as Pub/Sub may deliver): both are dead-lettered.
    ids = {stack.gcloud_publish("dispatcher-due", due, {"origin": "ops-test"}) for _ in range(2)}

    def two_letters() -> list[dict[str, Any]] | None:
        found = dead_letters(stack, "--topic", "dispatcher-due")
        return found if len(found) == 2 else None

    letters = wait_for(two_letters, timeout=60, message="two dead letters on dispatcher-due-dlq")
    assert {letter["attributes"]["dlq_source_message_id"] for letter in letters} == ids
    assert {letter["reason_class"] for letter in letters} == {"UnknownSubscriptionError"}
    # Listing did not consume them.
    assert len(dead_letters(stack, "--topic", "dispatcher-due")) == 2

    shown = dispatcher(stack, "dlq", "show", letters[0]["message_id"]).stdout
    assert "UnknownSubscriptionError" in shown and SUB in shown
    assert "add the subscription" in shown

    dispatcher(
        stack,
        "subscriptions",
        "add",
        SUB,
        "--name",
        "Ghost",
        "--every",
        "3600",
        "--source",
        "feed-a:rss",
        "--source",
        'feed-b:news-api:{"query": "ghost"}',
    )
    replay = json.loads(
        dispatcher(stack, "dlq", "replay", "--topic", "dispatcher-due", "--json").stdout
    )
    assert replay["counts"] == {"replayed": 2, "skipped": 0, "failed": 0, "purged": 0}

    def created() -> list[dict[str, Any]] | None:
        out = dispatcher(stack, "ledger", "dispatches", SUB, "--json").stdout
        rows: list[dict[str, Any]] = json.loads(out)
        return rows if len(rows) == 2 and all(r["state"] == "created" for r in rows) else None

    try:
        rows = wait_for(created, timeout=60, message="two created dispatches in the ledger")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; fanout log tail:\n{stack.log('fn-fanout')[-3000:]}") from None
    assert sorted((r["source_id"], r["state"]) for r in rows) == [
        ("feed-a", "created"),
        ("feed-b", "created"),
    ]
    assert {r["slot"][:19] for r in rows} == {"2026-01-05 09:00:00"}
    assert dead_letters(stack, "--topic", "dispatcher-due") == []

    def tasks() -> list[dict[str, Any]] | None:
        found = [r for r in stack.collector_requests() if SUB in json.dumps(r)]
        return found if len(found) >= 2 else None

    # Two replayed duplicates, one task per source: two tasks arrive, not four.
    arrived = wait_for(tasks, timeout=60, message="two tasks at the collector")
    assert len(arrived) == 2, arrived


def test_replay_keeps_the_dead_letter_when_the_republish_fails(stack: StackHandle) -> None:
    # A project of its own on the same emulator, so removing its topic disturbs no other test.
    project = "ops-replay-gone"
    base = f"http://{stack.env['PUBSUB_EMULATOR_HOST']}/v1/projects/{project}"
    for topic in ("dispatcher-due", "dispatcher-due-dlq"):
        requests.put(f"{base}/topics/{topic}", json={}, timeout=10)
    requests.put(
        f"{base}/subscriptions/dispatcher-due-dlq-sub",
        json={"topic": f"projects/{project}/topics/dispatcher-due-dlq", "ackDeadlineSeconds": 60},
        timeout=10,
    )
    data = base64.b64encode(json.dumps({"subscription_id": "x"}).encode()).decode()
    requests.post(
        f"{base}/topics/dispatcher-due-dlq:publish",
        json={
            "messages": [
                {
                    "data": data,
                    "attributes": {
                        "dlq_reason_class": "UnknownSubscriptionError",
                        "dlq_reason": "subscription 'x' does not exist",
                        "dlq_source_topic": "dispatcher-due",
                        "dlq_source_message_id": "1",
                        "dlq_failed_at": "2026-01-05T09:00:00Z",
                        "dlq_function": "fanout",
                    },
                }
            ]
        },
        timeout=10,
    ).raise_for_status()
    requests.delete(f"{base}/topics/dispatcher-due", timeout=10).raise_for_status()

    failed = dispatcher(
        stack,
        "dlq",
        "replay",
        "--project",
        project,
        "--topic",
        "dispatcher-due",
        "--json",
        expect=1,
    )
    report = json.loads(failed.stdout)
    assert report["counts"]["failed"] == 1 and report["counts"]["replayed"] == 0
    assert "NotFound" in report["failed"][0]["error"]
    kept = dead_letters(stack, "--project", project, "--topic", "dispatcher-due")
    assert [k["attributes"]["dlq_source_message_id"] for k in kept] == ["1"]
