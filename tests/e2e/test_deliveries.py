"""Email deliveries on the local stack: planner -> Cloud Tasks emulator (OIDC) -> the deliver
function (functions-framework) -> the SMTP sink, with the transaction rows in PostgreSQL.

The first test drives the whole chain through Pub/Sub: a due message, fanout, the collector stub,
its outcome on dispatcher-results, the results function completing the run and publishing
run-completed, pushed to plan-deliveries. The others call the planner directly to control the
sink around one planning; everything after it is the stack's real parts, Cloud Tasks' own
retries included.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import requests

from shared.clients import build_tasks_client
from shared.config import load_settings
from shared.dal.cloud_tasks import CloudTasksGateway
from shared.dal.records import StoredSubscription
from shared.email_settings import load_email_settings
from shared.ledger.deliveries import EmailLedger, EmailRow
from shared.ledger.repository import open_pool
from shared.ops.subscriptions import build_document
from shared.usecases.plan_deliveries import PlanDependencies, plan_after_run
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

pytestmark = pytest.mark.e2e

RECIPIENTS = ["oncall@acme.example", "ceo@acme.example"]


class Sink:
    def __init__(self, url: str) -> None:
        self.url = url

    def messages(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = requests.get(f"{self.url}/messages", timeout=5).json()
        return found

    def control(self, **plan: Any) -> None:
        requests.post(f"{self.url}/control", json=plan, timeout=5).raise_for_status()


@pytest.fixture
def sink(stack: StackHandle) -> Sink:
    sink = Sink(stack.env["SMTP_SINK_URL"])
    requests.delete(f"{sink.url}/messages", timeout=5).raise_for_status()
    sink.control(refuse_code=0, delay_reply_seconds=0)
    return sink


@pytest.fixture
def emails(stack: StackHandle) -> Iterator[EmailLedger]:
    pool = open_pool(stack.env["DATABASE_URL"], max_size=2)
    yield EmailLedger(pool)
    pool.close()


def _subscription(stack: StackHandle, firestore_client: Any, sub_id: str) -> StoredSubscription:
    now = datetime.now(UTC)
    _, doc = build_document(
        sub_id,
        {
            "name": f"Acme {sub_id}",
            "schedule": {"every": 3600},
            "sources": [{"id": "feed", "kind": "rss"}],
            "deliveries": [
                {
                    "id": "alert",
                    "channel": "email",
                    "to": RECIPIENTS,
                    "schedule": {"after": "run"},
                    "format": "alert",
                }
            ],
        },
        now=now,
        shard_count=load_settings(environ=stack.env).shard_count,
    )
    firestore_client.collection("subscriptions").document(sub_id).set(doc)
    return StoredSubscription(sub_id, doc)


def _plan(stack: StackHandle, emails: EmailLedger, stored: StoredSubscription, slot: str) -> Any:
    settings = load_settings(environ=stack.env)

    class Reader:
        def get(self, subscription_id: str) -> StoredSubscription | None:
            return stored if subscription_id == stored.id else None

    host = stack.env["CLOUD_TASKS_EMULATOR_HOST"]
    deps = PlanDependencies(
        store=emails,
        tasks=CloudTasksGateway(lambda: build_tasks_client(host)),
        subscriptions=Reader(),
        settings=load_email_settings(environ=stack.env),
        project=settings.project,
        location=settings.tasks_location,
    )
    event = {
        "run_id": 1,
        "subscription_id": stored.id,
        "slot": slot,
        "reason": "schedule",
        "succeeded": True,
        "completed_at": slot,
        "counts": {"succeeded": 1, "failed": 0, "skipped": 0, "lost": 0},
    }
    return plan_after_run(event, deps)


def _rows(emails: EmailLedger, sub_id: str) -> list[EmailRow]:
    return emails.list(sub_id)


def _all(emails: EmailLedger, sub_id: str, state: str) -> list[EmailRow] | None:
    """The subscription's two rows once both are in ``state``."""
    rows = _rows(emails, sub_id)
    return rows if len(rows) == len(RECIPIENTS) and all(r.state == state for r in rows) else None


def _slot() -> str:
    return datetime.now(UTC).replace(second=0, microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_a_collection_run_ends_with_one_alert_per_recipient_through_pub_sub(
    stack: StackHandle, firestore_client: Any, emails: EmailLedger, sink: Sink
) -> None:
    stored = _subscription(stack, firestore_client, "mail-chain")
    # A manual run now: fanout -> collector stub -> outcome -> results -> run-completed -> plan.
    stack.gcloud_publish("dispatcher-due", json.dumps({"subscription_id": "mail-chain"}))
    rows = wait_for(
        lambda: _all(emails, "mail-chain", "sent"),
        timeout=120,
        interval=0.5,
        message="the run's alert sent to both recipients",
    )
    assert {r.run_id for r in rows} != {None}
    messages = [m for m in sink.messages() if "mail-chain" in m["subject"]]
    assert sorted(m["rcpt_tos"][0] for m in messages) == sorted(RECIPIENTS)
    assert {m["message_id"] for m in messages} == {r.message_id for r in rows}
    # Three more copies of the run's run-completed event, as a crashed publisher could send.
    (row, *_) = rows
    event = {
        "run_id": row.run_id,
        "subscription_id": "mail-chain",
        "slot": row.slot.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "reason": "manual",
        "succeeded": True,
        "completed_at": row.slot.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "counts": {"succeeded": 1, "failed": 0, "skipped": 0, "lost": 0},
    }
    for _ in range(3):
        stack.gcloud_publish("dispatcher-run-completed", json.dumps(event))
    time.sleep(5)  # what a duplicate would need to come through: nothing more arrives
    assert len([m for m in sink.messages() if "mail-chain" in m["subject"]]) == 2
    assert len(_rows(emails, "mail-chain")) == 2
    assert stored.id == "mail-chain"


def test_after_run_alert_reaches_every_recipient_once_with_its_message_id(
    stack: StackHandle, firestore_client: Any, emails: EmailLedger, sink: Sink
) -> None:
    stored = _subscription(stack, firestore_client, "mail-once")
    slot = _slot()
    # The results function publishes at least once: three copies of the event.
    plans = [_plan(stack, emails, stored, slot) for _ in range(3)]
    assert [len(p.created) for p in plans] == [2, 0, 0]
    rows = wait_for(
        lambda: _all(emails, "mail-once", "sent"),
        timeout=60,
        message="both emails sent",
    )
    messages = sink.messages()
    assert sorted(m["rcpt_tos"][0] for m in messages) == sorted(RECIPIENTS)
    assert {m["message_id"] for m in messages} == {r.message_id for r in rows}
    assert all(r.smtp_reply and r.smtp_reply.startswith("250 ") for r in rows)
    assert all(m["subject"].startswith("[Acme mail-once] 0 new items at ") for m in messages)
    # Redelivered tasks (a replay by hand does the same) answer 200 and send nothing.
    time.sleep(2)
    assert len(sink.messages()) == 2


def test_temporary_refusals_are_retried_by_cloud_tasks_then_delivered_once(
    stack: StackHandle, firestore_client: Any, emails: EmailLedger, sink: Sink
) -> None:
    stored = _subscription(stack, firestore_client, "mail-retry")
    # The acceptance's 30 s of 4xx: Cloud Tasks' backoff (5, 10, 20, 40 s) carries it over.
    sink.control(refuse_code=451, refuse_seconds=30)
    started = time.monotonic()
    _plan(stack, emails, stored, _slot())
    rows = wait_for(
        lambda: _all(emails, "mail-retry", "sent"),
        timeout=120,
        interval=0.5,
        message="both emails sent after the refusals",
    )
    assert time.monotonic() - started >= 30
    assert all(r.attempts >= 2 for r in rows), [r.attempts for r in rows]
    assert len(sink.messages()) == 2


def test_a_permanent_refusal_is_failed_with_the_reason_and_not_retried(
    stack: StackHandle, firestore_client: Any, emails: EmailLedger, sink: Sink
) -> None:
    stored = _subscription(stack, firestore_client, "mail-550")
    sink.control(refuse_code=550, refuse_text="5.1.1 mailbox unavailable")
    _plan(stack, emails, stored, _slot())
    rows = wait_for(
        lambda: _all(emails, "mail-550", "failed"),
        timeout=60,
        message="both emails failed",
    )
    assert {r.last_error for r in rows} == {"DATA refused: 550 5.1.1 mailbox unavailable"}
    # Longer than the email queue's first backoff (5 s): no retry storm, one attempt each.
    time.sleep(7)
    assert [r.attempts for r in _rows(emails, "mail-550")] == [1, 1]
    assert sink.messages() == []


def test_deliver_killed_mid_send_is_retried_and_the_duplicate_has_the_same_message_id(
    stack: StackHandle, firestore_client: Any, emails: EmailLedger, sink: Sink
) -> None:
    stored = _subscription(stack, firestore_client, "mail-kill")
    stored = StoredSubscription(
        stored.id,
        {**stored.data, "deliveries": [{**stored.data["deliveries"][0], "to": RECIPIENTS[:1]}]},
    )
    firestore_client.collection("subscriptions").document(stored.id).set(dict(stored.data))
    # The sink keeps the message, then holds its 250 (shorter than the 2 s SMTP timeout): the
    # deliver process is SIGKILLed in that hold, after the email left, before `sent`.
    sink.control(delay_reply_seconds=1.5)
    _plan(stack, emails, stored, _slot())
    wait_for(
        lambda: [m for m in sink.messages() if "mail-kill" in m["subject"]],
        timeout=60,
        interval=0.05,
        message="the message to reach the sink",
    )
    for pid in stack.stack.component_pids("fn-deliver"):
        os.kill(pid, signal.SIGKILL)
    sink.control(delay_reply_seconds=0)
    leader = stack.stack.processes["fn-deliver"].popen
    assert leader is not None
    leader.wait(timeout=10)
    stack.stack.restart_component("fn-deliver")
    (row,) = _rows(emails, "mail-kill")
    assert row.state == "sending"
    # Cloud Tasks retries; within the 30 s sending lease the function answers "later", then
    # takes the row over and sends again.
    (row,) = wait_for(
        lambda: (
            _rows(emails, "mail-kill") if _rows(emails, "mail-kill")[0].state == "sent" else None
        ),
        timeout=180,
        interval=1.0,
        message="the retry to resolve the crash window",
    )
    assert row.resumed and row.attempts >= 2
    copies = [m for m in sink.messages() if "mail-kill" in m["subject"]]
    assert len(copies) == 2
    assert copies[0]["message_id"] == copies[1]["message_id"] == row.message_id
