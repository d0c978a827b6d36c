"""In-memory stand-ins for the email ledger, the SMTP sender and Firestore (unit tests only).

FakeEmailStore follows the SQL of shared/ledger/deliveries.py rule for rule; the integration
tests (tests/integration/ledger/test_ledger_emails.py) hold the real table to the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

from shared.dal.cloud_tasks import CreateOutcome
from shared.dal.records import StoredSubscription, TaskRequest
from shared.dal.smtp_sender import SmtpAccepted
from shared.delivery_key import DeliveryKey
from shared.email_render import SourceReport
from shared.ledger.deliveries import EmailClaim, EmailRow, EmailSpec, SendClaim

NOW = datetime(2026, 3, 9, 12, 0, 5, tzinfo=UTC)


def _key(key: DeliveryKey) -> tuple[str, str, datetime, str]:
    return (key.subscription_id, key.delivery_id, key.slot, key.recipient)


class FakeEmailStore:
    def __init__(self, sources: Sequence[SourceReport] = ()) -> None:
        self.rows: dict[tuple[str, str, datetime, str], EmailRow] = {}
        self.sources = list(sources)
        self.now = NOW
        self.collected_calls: list[tuple[str, datetime, datetime]] = []

    def claim(self, spec: EmailSpec) -> EmailClaim:
        k = _key(spec.key)
        if k in self.rows:
            return EmailClaim(self.rows[k], claimed=False)
        row = EmailRow(
            id=len(self.rows) + 1,
            subscription_id=spec.key.subscription_id,
            delivery_id=spec.key.delivery_id,
            slot=spec.key.slot,
            recipient=spec.key.recipient,
            format=spec.format,
            run_id=spec.run_id,
            task_name=spec.task_name,
            queue=spec.queue,
            task_state="claimed",
            task_error=None,
            state="queued",
            attempts=0,
            message_id=spec.message_id,
            smtp_reply=None,
            last_error=None,
            sending_since=None,
            resumed=False,
            sent_at=None,
            failed_at=None,
            created_at=self.now,
            updated_at=self.now,
        )
        self.rows[k] = row
        return EmailClaim(row, claimed=True)

    def task_created(self, key: DeliveryKey) -> None:
        self._set(key, True, task_state="created", task_error=None)

    def task_failed(self, key: DeliveryKey, error: str) -> None:
        row = self.rows[_key(key)]
        self._set(key, row.task_state != "created", task_state="failed", task_error=error)

    def begin_send(self, spec: EmailSpec, *, lease: timedelta) -> SendClaim:
        k = _key(spec.key)
        row = self.rows.get(k)
        if row is None:
            row = EmailRow(
                id=len(self.rows) + 1,
                subscription_id=spec.key.subscription_id,
                delivery_id=spec.key.delivery_id,
                slot=spec.key.slot,
                recipient=spec.key.recipient,
                format=spec.format,
                run_id=spec.run_id,
                task_name=spec.task_name,
                queue=spec.queue,
                task_state="created",
                task_error=None,
                state="sending",
                attempts=1,
                message_id=spec.message_id,
                smtp_reply=None,
                last_error=None,
                sending_since=self.now,
                resumed=False,
                sent_at=None,
                failed_at=None,
                created_at=self.now,
                updated_at=self.now,
            )
            self.rows[k] = row
            return SendClaim(row, 1)
        stale = (
            row.state == "sending"
            and row.sending_since is not None
            and (row.sending_since < self.now - lease)
        )
        if row.state == "queued" or stale:
            row = replace(
                row,
                state="sending",
                attempts=row.attempts + 1,
                sending_since=self.now,
                resumed=row.state == "sending",
            )
            self.rows[k] = row
            return SendClaim(row, row.attempts)
        return SendClaim(row, None)

    def _set(self, key: DeliveryKey, ok: bool, **changes: object) -> EmailRow:
        row = self.rows[_key(key)]
        if ok:
            row = replace(row, **changes)  # type: ignore[arg-type]
            self.rows[_key(key)] = row
        return row

    def mark_sent(self, key: DeliveryKey, attempt: int, smtp_reply: str) -> EmailRow:
        row = self.rows[_key(key)]
        return self._set(
            key,
            row.state != "sent",
            state="sent",
            sent_at=self.now,
            smtp_reply=smtp_reply,
            sending_since=None,
            last_error=None,
        )

    def mark_retry(self, key: DeliveryKey, attempt: int, error: str) -> EmailRow:
        row = self.rows[_key(key)]
        held = row.state == "sending" and row.attempts == attempt
        return self._set(key, held, state="queued", sending_since=None, last_error=error)

    def mark_failed(self, key: DeliveryKey, attempt: int, error: str) -> EmailRow:
        row = self.rows[_key(key)]
        held = row.state == "sending" and row.attempts == attempt
        return self._set(
            key, held, state="failed", failed_at=self.now, sending_since=None, last_error=error
        )

    def collected(
        self, subscription_id: str, since: datetime, until: datetime
    ) -> Sequence[SourceReport]:
        self.collected_calls.append((subscription_id, since, until))
        return [s for s in self.sources if since <= s.slot < until]

    def only_row(self) -> EmailRow:
        (row,) = self.rows.values()
        return row


class ScriptedSender:
    """Answers from a script: an exception to raise, or None to accept."""

    def __init__(self, *script: Exception | None) -> None:
        self.script = list(script)
        self.sent: list[tuple[EmailMessage, str, str]] = []

    def send(self, message: EmailMessage, sender: str, recipient: str) -> SmtpAccepted:
        outcome = self.script.pop(0) if self.script else None
        if outcome is not None:
            raise outcome
        self.sent.append((message, sender, recipient))
        return SmtpAccepted(f"250 2.0.0 Ok: queued as {len(self.sent)}")


class FakeSubscriptions:
    def __init__(self, *docs: StoredSubscription) -> None:
        self.docs = {d.id: d for d in docs}

    def get(self, subscription_id: str) -> StoredSubscription | None:
        return self.docs.get(subscription_id)


class FakeTasks:
    """Cloud Tasks as far as names go: a second create of a name is ALREADY_EXISTS."""

    def __init__(self, *failures: Exception) -> None:
        self.created: dict[str, TaskRequest] = {}
        self.calls = 0
        self.failures = list(failures)

    def create(self, request: TaskRequest) -> CreateOutcome:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if request.name in self.created:
            return CreateOutcome.ALREADY_EXISTS
        self.created[request.name] = request
        return CreateOutcome.CREATED
