"""Scheduled digests on the whole stack: an operator's import writes the digest's schedule, the
ticks drive collection (fanout, the collector stub, outcomes, completion, an after-run alert per
run), and the tick of the digest's slot -- five overlapping copies of it -- plans the digest on
select, whose email tasks reach the deliver function and the SMTP sink once per recipient.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from shared.ledger.deliveries import EmailLedger, EmailRow
from shared.ledger.repository import open_pool
from shared.scheduling.slots import ceil_minute
from tests.support.polling import wait_for
from tests.support.stack import StackHandle, dispatcher

pytestmark = pytest.mark.e2e

SUB = "digest-e2e"
DIGEST_TO = ["pr@acme.example", "press@acme.example"]
ALERT_TO = ["oncall@acme.example"]
NAME = "Acme e2e"


@pytest.fixture
def emails(stack: StackHandle) -> Iterator[EmailLedger]:
    pool = open_pool(stack.env["DATABASE_URL"], max_size=2)
    yield EmailLedger(pool)
    pool.close()


def _z(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def _publish_ticks(stack: StackHandle, at: datetime, copies: int) -> None:
    """``copies`` ticks for one instant in one request: the emulator's two push loops run them
    concurrently, as overlapping Cloud Scheduler deliveries would."""
    data = base64.b64encode(json.dumps({"time": _z(at)}).encode()).decode()
    url = (
        f"http://{stack.env['PUBSUB_EMULATOR_HOST']}/v1/projects/{stack.project}"
        "/topics/dispatcher-ticks:publish"
    )
    response = requests.post(url, json={"messages": [{"data": data}] * copies}, timeout=10)
    response.raise_for_status()


def _rows(emails: EmailLedger, delivery: str) -> list[EmailRow]:
    return [r for r in emails.list(SUB) if r.delivery_id == delivery]


def _sink(stack: StackHandle) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = requests.get(
        f"{stack.env['SMTP_SINK_URL']}/messages", timeout=5
    ).json()
    return [m for m in found if m["subject"].startswith(f"[{NAME}] ")]


def test_a_scheduled_digest_reaches_each_recipient_once_with_the_periods_runs(
    stack: StackHandle, firestore_client: Any, emails: EmailLedger, tmp_path: Path
) -> None:
    requests.delete(f"{stack.env['SMTP_SINK_URL']}/messages", timeout=5).raise_for_status()
    stack.reset_collector_control()
    # Two minutes: at least one collection run before the slot (import takes seconds), and the
    # test waits in real time for those runs' tasks to fall due.
    digest_at = ceil_minute(datetime.now(UTC)) + timedelta(minutes=2)
    spec = {
        "id": SUB,
        "name": NAME,
        "schedule": {"every": 60},
        "jitter_seconds": 0,
        "sources": [{"id": "feed", "kind": "rss"}],
        "deliveries": [
            {
                "id": "daily",
                "channel": "email",
                "to": DIGEST_TO,
                "schedule": {
                    "cron": f"{digest_at.minute} {digest_at.hour} * * *",
                    "timezone": "UTC",
                },
                "format": "digest",
            },
            {
                "id": "alert",
                "channel": "email",
                "to": ALERT_TO,
                "schedule": {"after": "run"},
                "format": "alert",
            },
        ],
    }
    path = tmp_path / "digest.yaml"
    path.write_text(json.dumps(spec))
    # The operator's import writes the subscription and its digest's schedule document.
    dispatcher(stack, "subscriptions", "import", str(path), "--replace")
    schedule = firestore_client.collection("delivery_schedules").document(f"{SUB}.daily").get()
    assert schedule.exists and schedule.get("next_run_at") == digest_at
    assert (
        not firestore_client.collection("delivery_schedules").document(f"{SUB}.alert").get().exists
    )
    first = firestore_client.collection("subscriptions").document(SUB).get().get("next_run_at")
    runs = []
    slot = first
    while slot < digest_at:
        runs.append(slot)
        slot += timedelta(minutes=1)
    assert 1 <= len(runs) <= 2
    # Collection: one tick per minute before the digest's slot; each run completes and alerts.
    for run in runs:
        stack.gcloud_publish("dispatcher-ticks", json.dumps({"time": _z(run)}))
    alerts = wait_for(
        lambda: (
            found
            if len(found := _rows(emails, "alert")) == len(runs)
            and all(r.state == "sent" for r in found)
            else None
        ),
        timeout=300,
        interval=1.0,
        message="an alert per completed run",
    )
    assert sorted(r.slot for r in alerts) == runs
    # The digest's slot: five overlapping ticks.
    _publish_ticks(stack, digest_at, 5)
    digests = wait_for(
        lambda: (
            found
            if len(found := _rows(emails, "daily")) == len(DIGEST_TO)
            and all(r.state == "sent" for r in found)
            else None
        ),
        timeout=120,
        interval=0.5,
        message="the digest sent to both recipients",
    )
    assert {r.slot for r in digests} == {digest_at}
    assert all(r.message_id and r.smtp_reply and r.smtp_reply.startswith("250 ") for r in digests)
    time.sleep(5)  # what a duplicate would need to come through: nothing more arrives
    messages = [m for m in _sink(stack) if m["subject"].startswith(f"[{NAME}] digest ")]
    assert sorted(m["rcpt_tos"][0] for m in messages) == sorted(DIGEST_TO)
    assert {m["message_id"] for m in messages} == {r.message_id for r in digests}
    assert len(_rows(emails, "daily")) == len(DIGEST_TO)
    # Every alert went out once too (one recipient per run; later runs may still be arriving).
    alert_mails = [m for m in _sink(stack) if " new items at " in m["subject"]]
    assert len({m["message_id"] for m in alert_mails}) == len(alert_mails) >= len(runs)
    # The content: what was collected in the period, i.e. the runs before the slot.
    period_runs = f"from {len(runs)} run{'s' if len(runs) != 1 else ''}"
    for message in messages:
        assert message["subject"] == (
            f"[{NAME}] digest {digest_at:%Y-%m-%d %H:%M} UTC: 0 items {period_runs}"
        )
        parsed = email.message_from_string(message["raw"], policy=email.policy.default)
        body = parsed.get_body(preferencelist=("plain",))
        assert body is not None
        text = body.get_content().replace("\r\n", "\n")  # SMTP's line ends
        start = digest_at - timedelta(hours=24)  # the first digest reports the day before
        assert f"Period: {start:%Y-%m-%d %H:%M} UTC to {digest_at:%Y-%m-%d %H:%M} UTC" in text
        assert "By source:\n  feed: 0" in text
        assert f"Subscription {SUB}, delivery daily." in text
    # The schedule moved on to tomorrow and remembers the slot it sent.
    schedule = firestore_client.collection("delivery_schedules").document(f"{SUB}.daily").get()
    assert schedule.get("next_run_at") == digest_at + timedelta(days=1)
    assert schedule.get("last_slot") == digest_at
