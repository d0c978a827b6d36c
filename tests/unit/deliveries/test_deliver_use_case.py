"""The deliver use case with fakes: one claim, one send, the right record and HTTP answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.dal.records import StoredSubscription
from shared.dal.smtp_sender import SmtpPermanentError, SmtpTemporaryError
from shared.delivery_key import DeliveryKey
from shared.email_render import SourceReport
from shared.email_settings import load_email_settings
from shared.usecases.deliver import DeliverDependencies, _spec, deliver
from tests.unit.deliveries.fakes import NOW, FakeEmailStore, FakeSubscriptions, ScriptedSender

RUN_SLOT = datetime(2026, 3, 9, 11, 45, tzinfo=UTC)
DIGEST_SLOT = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)  # 08:00 New York (EDT since 03-08)


def subscription(**changes: Any) -> StoredSubscription:
    data: dict[str, Any] = {
        "name": "Acme <news>",
        "schedule": {"every": 900},
        "sources": [
            {"id": "feed", "kind": "rss", "params": {}},
            {"id": "api", "kind": "rss", "params": {}},
        ],
        "deliveries": [
            {
                "id": "alert",
                "channel": "email",
                "to": ["OnCall@acme.example"],
                "schedule": {"after": "run"},
                "format": "alert",
            },
            {
                "id": "digest",
                "channel": "email",
                "to": ["pr@acme.example"],
                "schedule": {"cron": "0 8 * * 1-5", "timezone": "America/New_York"},
                "format": "digest",
            },
        ],
    }
    data.update(changes)
    return StoredSubscription("acme", data)


SOURCES = [
    SourceReport(RUN_SLOT, "api", "rss", "failed", True, None, "HTTP 500 from api <b>"),
    SourceReport(RUN_SLOT, "feed", "rss", "succeeded", True, 7, None),
    SourceReport(DIGEST_SLOT - timedelta(hours=30), "feed", "rss", "succeeded", True, 100, None),
]


def alert_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "delivery_key": {
            "subscription_id": "acme",
            "delivery_id": "alert",
            "slot": "2026-03-09T11:45:00Z",
            "recipient": "oncall@acme.example",
        },
        "format": "alert",
        "run_id": 3,
    }
    body.update(changes)
    return body


def digest_body() -> dict[str, Any]:
    return {
        "delivery_key": {
            "subscription_id": "acme",
            "delivery_id": "digest",
            "slot": "2026-03-09T12:00:00Z",
            "recipient": "pr@acme.example",
        },
        "format": "digest",
    }


def deps(
    store: FakeEmailStore, sender: ScriptedSender, subs: FakeSubscriptions | None = None
) -> DeliverDependencies:
    return DeliverDependencies(
        store=store,
        sender=sender,
        subscriptions=subs or FakeSubscriptions(subscription()),
        settings=load_email_settings(environ={}),
        project="p",
        location="l",
        clock=lambda: NOW,
    )


def test_alert_is_sent_once_with_a_stable_message_id_and_the_run_content() -> None:
    store, sender = FakeEmailStore(SOURCES), ScriptedSender()
    reply = deliver(alert_body(), deps(store, sender))
    assert (reply.status, reply.decision, reply.attempt) == (200, "sent", 1)
    ((message, envelope_from, recipient),) = sender.sent
    assert recipient == "oncall@acme.example"
    assert envelope_from == "dispatcher@dispatcher.invalid"
    assert message["Message-ID"] == reply.message_id
    assert message["Message-ID"].endswith(".alert@dispatcher.invalid>")
    assert (
        message["Subject"] == "[Acme <news>] 7 new items at 2026-03-09 11:45 UTC, 1 source failed"
    )
    plain, rich = message.get_body(("plain",)), message.get_body(("html",))
    assert plain is not None and rich is not None
    text, html = plain.get_content(), rich.get_content()
    assert "feed: 7" in text and "api: HTTP 500 from api <b>" in text
    assert "HTTP 500 from api &lt;b&gt;" in html and "Acme &lt;news&gt;" in html
    assert store.collected_calls == [("acme", RUN_SLOT, RUN_SLOT + timedelta(minutes=1))]
    row = store.only_row()
    assert (row.state, row.smtp_reply, row.run_id) == ("sent", "250 2.0.0 Ok: queued as 1", 3)
    # Redelivered task: 200 and nothing sent.
    again = deliver(alert_body(), deps(store, sender))
    assert (again.status, again.decision) == (200, "already-sent") and len(sender.sent) == 1


def test_digest_reports_the_day_before_its_slot_in_its_zone() -> None:
    store, sender = FakeEmailStore(SOURCES), ScriptedSender()
    reply = deliver(digest_body(), deps(store, sender))
    assert reply.decision == "sent"
    message = sender.sent[0][0]
    assert message["Subject"] == (
        "[Acme <news>] digest 2026-03-09 08:00 EDT: 7 items from 1 run, 1 source failed"
    )
    assert store.collected_calls == [("acme", DIGEST_SLOT - timedelta(hours=24), DIGEST_SLOT)]


def test_temporary_refusal_answers_503_then_the_retry_sends() -> None:
    store = FakeEmailStore(SOURCES)
    sender = ScriptedSender(SmtpTemporaryError("DATA deferred: 451 4.3.0 busy"))
    first = deliver(alert_body(), deps(store, sender))
    assert (first.status, first.decision) == (503, "retry")
    assert (store.only_row().state, store.only_row().last_error) == (
        "queued",
        "DATA deferred: 451 4.3.0 busy",
    )
    second = deliver(alert_body(), deps(store, sender))
    assert (second.status, second.decision, second.attempt) == (200, "sent", 2)
    assert len(sender.sent) == 1


def test_permanent_refusal_is_failed_with_the_reason_and_never_retried() -> None:
    store = FakeEmailStore(SOURCES)
    sender = ScriptedSender(SmtpPermanentError("RCPT TO refused: 550 5.1.1 no such user"))
    reply = deliver(alert_body(), deps(store, sender))
    assert (reply.status, reply.decision) == (200, "failed")
    row = store.only_row()
    assert (row.state, row.last_error) == ("failed", "RCPT TO refused: 550 5.1.1 no such user")
    again = deliver(alert_body(), deps(store, sender))
    assert (again.status, again.decision) == (200, "already-failed")
    assert sender.sent == [] and sender.script == []


def test_a_living_attempt_makes_the_duplicate_wait_and_a_dead_one_is_taken_over() -> None:
    store, sender = FakeEmailStore(SOURCES), ScriptedSender()
    spec_deps = deps(store, sender)
    # An attempt claimed the row and died before marking (the crash window).
    key = DeliveryKey("acme", "alert", RUN_SLOT, "oncall@acme.example")
    claim = store.begin_send(_spec(key, "alert", 3, spec_deps, None), lease=timedelta(seconds=30))
    assert claim.attempt == 1
    blocked = deliver(alert_body(), spec_deps)
    assert (blocked.status, blocked.decision) == (503, "in-progress") and sender.sent == []
    store.now = NOW + timedelta(seconds=31)
    taken = deliver(alert_body(), spec_deps)
    assert (taken.status, taken.decision, taken.attempt) == (200, "sent", 2)
    assert store.only_row().resumed
    assert sender.sent[0][0]["Message-ID"] == claim.row.message_id


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        (None, "subscription deleted"),
        (subscription(deliveries=[]), "delivery 'alert' removed"),
        (
            subscription(
                deliveries=[
                    {
                        "id": "alert",
                        "channel": "email",
                        "to": ["x@acme.example"],
                        "schedule": {"after": "run"},
                        "format": "alert",
                    }
                ]
            ),
            "recipient removed",
        ),
    ],
)
def test_unwanted_emails_are_recorded_failed_not_sent(
    doc: StoredSubscription | None, reason: str
) -> None:
    store, sender = FakeEmailStore(SOURCES), ScriptedSender()
    subs = FakeSubscriptions(*([doc] if doc else []))
    reply = deliver(alert_body(), deps(store, sender, subs))
    assert (reply.status, reply.decision) == (200, "refused")
    assert reason in store.only_row().last_error  # type: ignore[operator]
    assert sender.sent == []


def test_invalid_body_with_a_readable_key_is_dead_lettered_in_the_ledger() -> None:
    store, sender = FakeEmailStore(SOURCES), ScriptedSender()
    reply = deliver(alert_body(format="newsletter"), deps(store, sender))
    assert (reply.status, reply.decision) == (200, "refused")
    row = store.only_row()
    assert row.state == "failed"
    assert row.last_error == (
        "invalid email task: $.format: 'newsletter' is not one of ['digest', 'alert'] [enum]"
    )
    assert sender.sent == []


def test_unreadable_body_is_a_400_with_the_reason() -> None:
    store, sender = FakeEmailStore(), ScriptedSender()
    reply = deliver({"format": "alert"}, deps(store, sender))
    assert (reply.status, reply.decision) == (400, "invalid-unreadable")
    assert "$: " in reply.detail and "[required]" in reply.detail
    assert store.rows == {}


def test_a_ledger_failure_while_rendering_hands_the_row_back() -> None:
    class Broken(FakeEmailStore):
        def collected(self, *args: Any) -> Any:
            raise RuntimeError("connection reset")

    store, sender = Broken(), ScriptedSender()
    reply = deliver(alert_body(), deps(store, sender))
    assert (reply.status, reply.decision) == (503, "retry")
    assert store.only_row().state == "queued" and sender.sent == []
