"""The delivery key and the names derived from it are pure functions of the key."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.delivery_key import DeliveryKey, email_task_id, message_id

SLOT = datetime(2026, 3, 9, 12, 0, tzinfo=UTC)


def test_same_instant_and_recipient_spelling_are_one_key() -> None:
    ny = timezone(timedelta(hours=-4))
    a = DeliveryKey("acme", "digest", SLOT, "Ops@Acme.example")
    b = DeliveryKey("acme", "digest", SLOT.astimezone(ny), "ops@acme.example")
    assert (
        a.canonical() == b.canonical() == "email|acme|digest|2026-03-09T12:00:00Z|ops@acme.example"
    )
    assert email_task_id(a) == email_task_id(b)
    assert message_id(a, "mail.example") == message_id(b, "mail.example")


def test_each_part_changes_the_names() -> None:
    base = DeliveryKey("acme", "digest", SLOT, "a@x.example")
    others = [
        DeliveryKey("acme2", "digest", SLOT, "a@x.example"),
        DeliveryKey("acme", "alert", SLOT, "a@x.example"),
        DeliveryKey("acme", "digest", SLOT + timedelta(days=1), "a@x.example"),
        DeliveryKey("acme", "digest", SLOT, "b@x.example"),
    ]
    names = {email_task_id(k) for k in [base, *others]}
    assert len(names) == 5


def test_message_id_hides_the_recipient_and_is_a_valid_msg_id() -> None:
    key = DeliveryKey("acme", "digest", SLOT, "secret.person@x.example")
    value = message_id(key, "dispatcher.example")
    assert value.startswith("<") and value.endswith(".digest@dispatcher.example>")
    assert "secret" not in value
    with pytest.raises(ValueError, match="dot-atom"):
        message_id(key, "bad domain>")


def test_task_id_uses_the_task_alphabet_and_fits() -> None:
    key = DeliveryKey("a" * 100, "d" * 100, SLOT, "x@y.example")
    task = email_task_id(key)
    assert len(task) <= 500
    assert all(c.isalnum() or c in "_-" for c in task)


def test_naive_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DeliveryKey("acme", "digest", datetime(2026, 3, 9, 12, 0), "a@x.example")
