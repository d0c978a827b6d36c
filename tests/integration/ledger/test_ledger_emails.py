"""The email transaction table on a real PostgreSQL: one row per (delivery key, recipient), one
sender at a time, final states that stay final, and the lease that resolves a crashed sender."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

from shared.delivery_key import DeliveryKey, email_task_id, message_id
from shared.ledger.deliveries import EmailLedger, EmailSpec
from shared.ledger.repository import Ledger

pytestmark = pytest.mark.integration

T = TypeVar("T")
SLOT = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


@pytest.fixture
def emails(ledger: Ledger) -> EmailLedger:
    # `ledger` wipes the tables (email_deliveries included) and shares its pool.
    return EmailLedger(ledger.pool)


def _spec(recipient: str = "ops@acme.example", delivery: str = "digest") -> EmailSpec:
    key = DeliveryKey("acme", delivery, SLOT, recipient)
    return EmailSpec(
        key=key,
        format="digest",
        task_name=f"projects/p/locations/l/queues/email/tasks/{email_task_id(key)}",
        queue="email",
        message_id=message_id(key, "dispatcher.test"),
    )


def _together(count: int, work: Callable[[int], T]) -> list[T]:
    barrier = threading.Barrier(count)
    results: list[T] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        barrier.wait()
        result = work(i)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == count
    return results


def test_claim_once_under_concurrent_planners(emails: EmailLedger) -> None:
    claims = _together(12, lambda _: emails.claim(_spec()))
    assert sum(c.claimed for c in claims) == 1
    assert {c.row.id for c in claims} == {claims[0].row.id}
    row = claims[0].row
    assert (row.state, row.task_state, row.attempts) == ("queued", "claimed", 0)
    assert all(c.must_create for c in claims)
    emails.task_created(_spec().key)
    again = emails.claim(_spec())
    assert not again.claimed and not again.must_create


def test_recipient_case_is_one_key(emails: EmailLedger) -> None:
    assert emails.claim(_spec("Ops@Acme.example")).claimed
    assert not emails.claim(_spec("ops@acme.example")).claimed
    assert emails.claim(_spec("other@acme.example")).claimed


def test_only_one_concurrent_sender_wins_and_sent_is_final(emails: EmailLedger) -> None:
    emails.claim(_spec())
    sends = _together(10, lambda _: emails.begin_send(_spec()))
    winners = [s for s in sends if s.may_send]
    assert len(winners) == 1 and winners[0].attempt == 1
    assert all(s.row.state == "sending" for s in sends)
    row = emails.mark_sent(_spec().key, 1, "250 2.0.0 Ok: queued as ABC")
    assert (row.state, row.smtp_reply, row.sending_since) == (
        "sent",
        "250 2.0.0 Ok: queued as ABC",
        None,
    )
    assert row.sent_at is not None and row.message_id == _spec().message_id
    # A redelivered task for a sent row gets the row back and no permission to send.
    later = emails.begin_send(_spec())
    assert not later.may_send and later.row.state == "sent" and later.row.attempts == 1


def test_temporary_refusal_requeues_then_next_attempt_sends(emails: EmailLedger) -> None:
    first = emails.begin_send(_spec())  # no planner row: the deliver function inserts it
    assert first.attempt == 1 and first.row.task_state == "created"
    row = emails.mark_retry(_spec().key, 1, "451 4.3.0 try again later")
    assert (row.state, row.last_error) == ("queued", "451 4.3.0 try again later")
    second = emails.begin_send(_spec())
    assert second.attempt == 2 and not second.row.resumed
    # The first attempt's late retry mark cannot undo the second's claim (fenced on attempt).
    assert emails.mark_retry(_spec().key, 1, "late").state == "sending"
    assert emails.mark_sent(_spec().key, 2, "250 ok").state == "sent"


def test_permanent_refusal_is_final(emails: EmailLedger) -> None:
    emails.begin_send(_spec())
    row = emails.mark_failed(_spec().key, 1, "550 5.1.1 mailbox unavailable")
    assert (row.state, row.last_error) == ("failed", "550 5.1.1 mailbox unavailable")
    assert row.failed_at is not None
    again = emails.begin_send(_spec())
    assert not again.may_send and again.row.state == "failed" and again.row.attempts == 1


def test_a_crashed_sender_is_taken_over_only_after_the_lease(
    emails: EmailLedger, sql_conn: psycopg.Connection[tuple[Any, ...]]
) -> None:
    assert emails.begin_send(_spec()).attempt == 1
    # The sender died: no mark. Within the lease, the retry must wait (answer "later").
    blocked = emails.begin_send(_spec(), lease=timedelta(minutes=2))
    assert not blocked.may_send and blocked.row.state == "sending"
    sql_conn.execute("UPDATE email_deliveries SET sending_since = now() - interval '3 minutes'")
    taken = emails.begin_send(_spec(), lease=timedelta(minutes=2))
    assert taken.attempt == 2 and taken.row.resumed
    # Same Message-ID on the takeover: a duplicate in this window is recognisable.
    assert taken.row.message_id == _spec().message_id


def test_list_and_get(emails: EmailLedger) -> None:
    emails.claim(_spec("a@acme.example"))
    emails.claim(_spec("b@acme.example", delivery="alert"))
    emails.begin_send(_spec("a@acme.example"))
    emails.mark_sent(_spec("a@acme.example").key, 1, "250 ok")
    assert [r.recipient for r in emails.list("acme")] == ["b@acme.example", "a@acme.example"]
    assert [r.recipient for r in emails.list(state="sent")] == ["a@acme.example"]
    assert emails.list("other") == []
    row = emails.get(_spec("a@acme.example").key)
    assert row is not None and emails.get_by_id(row.id) == row
    assert emails.get(_spec("c@acme.example").key) is None
