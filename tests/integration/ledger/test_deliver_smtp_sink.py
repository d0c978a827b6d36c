"""The deliver use case against the real parts: PostgreSQL (email_deliveries), the SMTP sink as
its own process (aiosmtpd), and smtplib talking to it.

What the acceptance list asks of one delivery key, short of Cloud Tasks itself (the attempts
Cloud Tasks would make are made here by calling the use case again): temporary refusals retried
then delivered once; 550 failed with the reason and no further conversation; concurrent
duplicates send one email; a deliver process killed after the server accepted the message and
before ``sent`` was recorded is resolved by the next attempt with the same Message-ID.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from emulators.process import ManagedProcess, free_port, http_ready
from shared.dal.records import StoredSubscription
from shared.dal.smtp_sender import SmtpSender
from shared.delivery_key import DeliveryKey
from shared.email_settings import EmailSettings, load_email_settings
from shared.ledger.deliveries import EmailLedger
from shared.ledger.repository import Ledger, open_pool
from shared.usecases.deliver import DeliverDependencies, DeliverReply, deliver
from tests.support.polling import wait_for

pytestmark = pytest.mark.integration

SLOT = datetime(2026, 3, 9, 11, 45, tzinfo=UTC)
SUBSCRIPTION = StoredSubscription(
    "acme",
    {
        "name": "Acme",
        "schedule": {"every": 900},
        "sources": [{"id": "feed", "kind": "rss", "params": {}}],
        "deliveries": [
            {
                "id": "alert",
                "channel": "email",
                "to": ["oncall@acme.example"],
                "schedule": {"after": "run"},
                "format": "alert",
            }
        ],
    },
)
BODY: dict[str, Any] = {
    "delivery_key": {
        "subscription_id": "acme",
        "delivery_id": "alert",
        "slot": "2026-03-09T11:45:00Z",
        "recipient": "oncall@acme.example",
    },
    "format": "alert",
}
KEY = DeliveryKey("acme", "alert", SLOT, "oncall@acme.example")


@dataclass
class Sink:
    smtp_port: int
    http: str

    def messages(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = requests.get(f"{self.http}/messages", timeout=5).json()
        return answer

    def control(self, **plan: Any) -> dict[str, Any]:
        response = requests.post(f"{self.http}/control", json=plan, timeout=5)
        response.raise_for_status()
        answer: dict[str, Any] = response.json()
        return answer


@pytest.fixture(scope="module")
def sink_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sink]:
    directory = tmp_path_factory.mktemp("smtp-sink")
    smtp_port, http_port = free_port(), free_port()
    process = ManagedProcess(
        "smtp-sink",
        [
            sys.executable,
            "-m",
            "emulators.smtp_sink",
            "--port",
            str(smtp_port),
            "--http-port",
            str(http_port),
            "--record-file",
            str(directory / "sink.jsonl"),
        ],
        directory / "sink.log",
        ready=http_ready(f"http://127.0.0.1:{http_port}/healthz"),
        cwd=Path(__file__).resolve().parents[3],
    )
    process.start()
    try:
        process.wait_ready()
        yield Sink(smtp_port, f"http://127.0.0.1:{http_port}")
    finally:
        process.stop()


@pytest.fixture
def sink(sink_process: Sink) -> Sink:
    requests.delete(f"{sink_process.http}/messages", timeout=5).raise_for_status()
    sink_process.control(refuse_code=0, delay_reply_seconds=0)
    return sink_process


def _settings(smtp_port: int, timeout: float) -> EmailSettings:
    # Short timeouts and lease so the crash window closes in seconds (lease > 10 x timeout).
    return load_email_settings(
        environ={},
        smtp_port=smtp_port,
        smtp_timeout_seconds=timeout,
        sending_lease_seconds=timeout * 10 + 1,
    )


def _deps(emails: EmailLedger, smtp_port: int, timeout: float = 0.5) -> DeliverDependencies:
    class Subscriptions:
        def get(self, subscription_id: str) -> StoredSubscription | None:
            return SUBSCRIPTION if subscription_id == "acme" else None

    settings = _settings(smtp_port, timeout)
    return DeliverDependencies(
        store=emails,
        sender=SmtpSender(settings),
        subscriptions=Subscriptions(),
        settings=settings,
        project="p",
        location="l",
    )


@pytest.fixture
def emails(ledger: Ledger) -> EmailLedger:
    return EmailLedger(ledger.pool)


def test_sent_once_with_the_stable_message_id_and_the_server_reply(
    emails: EmailLedger, sink: Sink
) -> None:
    reply = deliver(BODY, _deps(emails, sink.smtp_port))
    assert (reply.status, reply.decision) == (200, "sent"), reply.detail
    (message,) = sink.messages()
    assert message["message_id"] == reply.message_id
    assert message["rcpt_tos"] == ["oncall@acme.example"]
    assert message["subject"].startswith("[Acme] 0 new items at 2026-03-09 11:45 UTC")
    row = emails.get(KEY)
    assert row is not None
    assert (row.state, row.smtp_reply, row.message_id) == (
        "sent",
        f"250 2.0.0 Ok: queued as {message['number']}",
        reply.message_id,
    )
    again = deliver(BODY, _deps(emails, sink.smtp_port))
    assert again.decision == "already-sent" and len(sink.messages()) == 1


def test_temporary_refusals_are_retried_then_delivered_once(
    emails: EmailLedger, sink: Sink
) -> None:
    sink.control(refuse_code=451, refuse_seconds=2)
    replies: list[DeliverReply] = []

    def attempt() -> bool:
        # What Cloud Tasks does on a 503: call again after a backoff.
        replies.append(deliver(BODY, _deps(emails, sink.smtp_port)))
        return replies[-1].status == 200

    wait_for(attempt, timeout=30, interval=0.5, message="the sink to accept")
    assert replies[0].status == 503 and "451" in replies[0].detail
    assert replies[-1].decision == "sent"
    assert len(sink.messages()) == 1
    row = emails.get(KEY)
    assert row is not None and row.state == "sent" and row.attempts == len(replies) >= 2


def test_permanent_refusal_is_failed_with_the_reason_and_not_retried(
    emails: EmailLedger, sink: Sink
) -> None:
    sink.control(refuse_code=550, refuse_text="5.1.1 mailbox unavailable")
    reply = deliver(BODY, _deps(emails, sink.smtp_port))
    assert (reply.status, reply.decision) == (200, "failed")
    row = emails.get(KEY)
    assert row is not None and row.state == "failed"
    assert row.last_error == "DATA refused: 550 5.1.1 mailbox unavailable"
    sink.control(refuse_code=0)
    for _ in range(3):  # Cloud Tasks would not retry a 200; a duplicate task must not send either
        assert deliver(BODY, _deps(emails, sink.smtp_port)).decision == "already-failed"
    assert sink.messages() == [] and emails.get(KEY).attempts == 1  # type: ignore[union-attr]


def test_no_verdict_after_the_message_was_sent_is_temporary_and_says_so(
    emails: EmailLedger, sink: Sink
) -> None:
    sink.control(delay_reply_seconds=2.0)  # longer than the 0.5 s timeout
    reply = deliver(BODY, _deps(emails, sink.smtp_port))
    assert (reply.status, reply.decision) == (503, "retry")
    assert "after the message was sent (it may have been delivered)" in reply.detail
    assert len(sink.messages()) == 1  # it was delivered: the retry will duplicate it ...
    sink.control(delay_reply_seconds=0)
    assert deliver(BODY, _deps(emails, sink.smtp_port)).decision == "sent"
    first, second = sink.messages()
    assert first["message_id"] == second["message_id"]  # ... as the same message


def test_no_connection_is_temporary(emails: EmailLedger) -> None:
    reply = deliver(BODY, _deps(emails, free_port()))
    assert (reply.status, reply.decision) == (503, "retry")
    row = emails.get(KEY)
    assert row is not None and row.state == "queued"
    assert row.last_error is not None and "no SMTP conversation" in row.last_error


def test_concurrent_duplicates_send_one_email(emails: EmailLedger, sink: Sink) -> None:
    from concurrent.futures import ThreadPoolExecutor

    sink.control(delay_reply_seconds=1.0)  # keep the winner inside its conversation
    with ThreadPoolExecutor(5) as pool:
        replies = list(
            pool.map(lambda _: deliver(BODY, _deps(emails, sink.smtp_port, 5.0)), range(5))
        )
    assert sorted(r.decision for r in replies) == ["in-progress"] * 4 + ["sent"]
    assert len(sink.messages()) == 1


def _deliver_in_child(database_url: str, smtp_port: int) -> None:
    pool = open_pool(database_url, max_size=1)
    deliver(BODY, _deps(EmailLedger(pool), smtp_port))


def test_killed_mid_send_is_resolved_by_the_retry_with_the_same_message_id(
    emails: EmailLedger,
    sink: Sink,
    database_url: str,
    sql_conn: psycopg.Connection[tuple[Any, ...]],
) -> None:
    # The sink stores the message, then waits before its 250: the deliver process is killed in
    # that wait, after the email left and before `sent` could be recorded.
    sink.control(delay_reply_seconds=5.0)
    child = multiprocessing.get_context("spawn").Process(
        target=_deliver_in_child, args=(database_url, sink.smtp_port)
    )
    child.start()
    try:
        wait_for(sink.messages, timeout=30, message="the message to reach the sink")
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    row = emails.get(KEY)
    assert row is not None and row.state == "sending"
    sink.control(delay_reply_seconds=0)
    # Within the lease the retry waits: the first attempt might still be alive.
    assert deliver(BODY, _deps(emails, sink.smtp_port)).decision == "in-progress"
    # Cloud Tasks' later retry, once the lease has run out (moved back rather than slept).
    sql_conn.execute(
        "UPDATE email_deliveries SET sending_since = sending_since - interval '10 seconds'"
    )
    reply = deliver(BODY, _deps(emails, sink.smtp_port))
    assert (reply.status, reply.decision, reply.attempt) == (200, "sent", 2)
    first, second = sink.messages()
    # The documented crash window: a duplicate, recognisable as the same message.
    assert first["message_id"] == second["message_id"] == reply.message_id
    row = emails.get(KEY)
    assert row is not None and row.state == "sent" and row.resumed
    assert deliver(BODY, _deps(emails, sink.smtp_port)).decision == "already-sent"
    assert len(sink.messages()) == 2
