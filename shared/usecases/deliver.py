"""The deliver use case: one email task in, at most one email out, its transaction recorded.

One request of the ``email`` queue (``functions/deliver``) asks for one delivery key: one
delivery of one subscription, one slot, one recipient. In order:

1. the body is validated (``email-task.v1.json``). Unreadable without a key: 400, logged (Cloud
   Tasks retries to its max attempts, then drops it: there is no row to put it in). Invalid but
   with a readable key: the row is recorded ``failed`` with the reason and 200 is answered --
   the ledger is where a bad task is dead-lettered, visible in ``dispatcher deliveries``;
2. the subscription is re-read: deleted, delivery removed or recipient removed since the task
   was planned -> ``failed`` ("not wanted any more: ..."), 200, nothing sent;
3. the row is claimed with one conditional write (:meth:`EmailLedger.begin_send`). Already
   ``sent`` or ``failed``: 200, nothing sent. Held by a living attempt: 503 (try later);
4. the message is rendered from the ledger and sent with the Message-ID of the key;
5. accepted -> ``sent`` (with the server's reply), 200. 5xx -> ``failed`` with the reason, 200,
   never retried. 4xx or no connection -> back to ``queued`` with the error, 503: Cloud Tasks
   retries with the email queue's backoff.

What is guaranteed (docs/deliveries.md): never two SMTP conversations for one key at the same
time; never a send after ``sent`` or ``failed`` was recorded. What is not: if the process dies,
or the ledger is unreachable, after the server accepted the message and before ``sent`` is
recorded, the next attempt (after the sending lease) sends it again -- with the same Message-ID,
so the duplicate is the same message to every mail client that threads or deduplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from shared import contracts
from shared.dal.records import StoredSubscription
from shared.dal.smtp_sender import SmtpAccepted, SmtpPermanentError, SmtpTemporaryError
from shared.delivery_key import DeliveryKey, email_task_id, message_id
from shared.email_render import Collected, SourceReport, render
from shared.email_settings import EmailSettings
from shared.envelope import parse_rfc3339
from shared.errors import SchemaValidationError
from shared.ledger.deliveries import EmailRow, EmailSpec, SendClaim
from shared.subscription import CronSchedule, InvalidSubscription, Subscription

logger = logging.getLogger(__name__)

#: A digest without ``period_start`` reports the day before its slot.
DEFAULT_DIGEST_PERIOD = timedelta(hours=24)
#: Longest period one digest may report (a typo'd period_start must not read the whole ledger).
MAX_DIGEST_PERIOD = timedelta(days=31)


class EmailStore(Protocol):
    """The part of :class:`shared.ledger.deliveries.EmailLedger` the use case needs."""

    def begin_send(self, spec: EmailSpec, *, lease: timedelta) -> SendClaim: ...
    def mark_sent(self, key: DeliveryKey, attempt: int, smtp_reply: str) -> EmailRow: ...
    def mark_retry(self, key: DeliveryKey, attempt: int, error: str) -> EmailRow: ...
    def mark_failed(self, key: DeliveryKey, attempt: int, error: str) -> EmailRow: ...
    def collected(
        self, subscription_id: str, since: datetime, until: datetime
    ) -> Sequence[SourceReport]: ...


class Sender(Protocol):
    def send(self, message: EmailMessage, sender: str, recipient: str) -> SmtpAccepted: ...


class SubscriptionReader(Protocol):
    def get(self, subscription_id: str) -> StoredSubscription | None: ...


@dataclass(frozen=True)
class DeliverDependencies:
    store: EmailStore
    sender: Sender
    subscriptions: SubscriptionReader
    settings: EmailSettings
    project: str
    location: str
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass(frozen=True)
class DeliverReply:
    """The HTTP answer for Cloud Tasks and the one log line of the request."""

    status: int
    decision: str
    detail: str = ""
    key: DeliveryKey | None = None
    attempt: int | None = None
    message_id: str | None = None

    def log_fields(self) -> dict[str, Any]:
        return {
            "decision": self.decision,
            "status": self.status,
            "detail": self.detail,
            "delivery_key": self.key.to_json() if self.key else None,
            "attempt": self.attempt,
            "message_id": self.message_id,
        }


def _readable_key(body: Any) -> DeliveryKey | None:
    """The delivery key of an invalid body, if every part of it is usable on its own."""
    if not isinstance(body, Mapping) or not isinstance(body.get("delivery_key"), Mapping):
        return None
    raw = body["delivery_key"]
    parts = {"subscription_id": "", "delivery_id": "", "slot": "", "recipient": ""}
    for name in parts:
        value = raw.get(name)
        if not isinstance(value, str):
            return None
        parts[name] = value
    try:
        contracts.validate(
            "email-task", {"delivery_key": dict(raw), "format": "alert"}
        )  # the key alone must be valid
        return DeliveryKey(
            parts["subscription_id"],
            parts["delivery_id"],
            parse_rfc3339(parts["slot"]),
            parts["recipient"],
        )
    except (SchemaValidationError, ValueError):
        return None


def deliver(body: Any, deps: DeliverDependencies, *, task_name: str | None = None) -> DeliverReply:
    """Handle one email task body (already JSON-decoded); see the module docstring."""
    settings = deps.settings
    try:
        contracts.validate("email-task", body)
    except SchemaValidationError as exc:
        key = _readable_key(body)
        problem = exc.issues[0].message if exc.issues else exc.message
        reason = f"invalid email task: {exc.path}: {problem} [{exc.rule}]"
        if key is None:
            return DeliverReply(400, "invalid-unreadable", reason)
        fmt = body.get("format") if body.get("format") in ("digest", "alert") else "alert"
        return _fail_without_sending(deps, _spec(key, fmt, None, deps, task_name), reason)

    raw_key = body["delivery_key"]
    key = DeliveryKey(
        raw_key["subscription_id"],
        raw_key["delivery_id"],
        parse_rfc3339(raw_key["slot"]),
        raw_key["recipient"],
    )
    spec = _spec(key, body["format"], body.get("run_id"), deps, task_name)

    # 2. Still wanted? (Reading Firestore may fail: RetryableError propagates -> 503.)
    stored = deps.subscriptions.get(key.subscription_id)
    try:
        subscription = (
            None if stored is None else Subscription.from_document(stored.id, stored.data)
        )
    except InvalidSubscription as exc:
        return _fail_without_sending(deps, spec, f"subscription document malformed: {exc}")
    unwanted = _unwanted(subscription, key)
    if unwanted is not None:
        return _fail_without_sending(deps, spec, f"not wanted any more: {unwanted}")
    assert subscription is not None  # _unwanted said it exists
    delivery = subscription.delivery(key.delivery_id)
    assert delivery is not None

    # 3. The claim: the only way to the SMTP server.
    claim = deps.store.begin_send(spec, lease=timedelta(seconds=settings.sending_lease_seconds))
    if not claim.may_send:
        return _not_claimed(claim, key)
    attempt = claim.attempt
    assert attempt is not None
    if claim.row.resumed:
        logger.warning(
            "taking over an email whose previous attempt vanished mid-send: it may have been "
            "delivered once already; resending with the same Message-ID %s",
            spec.message_id,
        )

    # 4. Render from the ledger.
    zone = (
        ZoneInfo(delivery.schedule.timezone)
        if isinstance(delivery.schedule, CronSchedule)
        else ZoneInfo("UTC")
    )
    if spec.format == "alert":
        since, until = key.slot, key.slot + timedelta(minutes=1)
    else:
        start = body.get("period_start")
        since = parse_rfc3339(start) if start else key.slot - DEFAULT_DIGEST_PERIOD
        since = max(min(since, key.slot), key.slot - MAX_DIGEST_PERIOD)
        until = key.slot
    try:
        sources = deps.store.collected(key.subscription_id, since, until)
        message = render(
            Collected(key, subscription.name, spec.format, since, until, zone, sources),
            sender=settings.sender,
            message_id=spec.message_id,
            sent_at=deps.clock(),
        )
    except Exception as exc:
        # Nothing was sent: hand the row back at once rather than leaving it held until the
        # lease runs out (a ledger hiccup would otherwise delay the email by the lease).
        logger.exception("could not build the email for %s", key.canonical())
        deps.store.mark_retry(key, attempt, f"building the email: {type(exc).__name__}: {exc}")
        return DeliverReply(503, "retry", str(exc), key, attempt, spec.message_id)

    # 5. Send and record what the server said.
    try:
        accepted = deps.sender.send(message, _envelope_sender(settings.sender), key.recipient)
    except SmtpPermanentError as exc:
        deps.store.mark_failed(key, attempt, str(exc))
        return DeliverReply(200, "failed", str(exc), key, attempt, spec.message_id)
    except SmtpTemporaryError as exc:
        deps.store.mark_retry(key, attempt, str(exc))
        return DeliverReply(503, "retry", str(exc), key, attempt, spec.message_id)
    deps.store.mark_sent(key, attempt, accepted.reply)
    return DeliverReply(200, "sent", accepted.reply, key, attempt, spec.message_id)


def _spec(
    key: DeliveryKey,
    fmt: str,
    run_id: int | None,
    deps: DeliverDependencies,
    task_name: str | None,
) -> EmailSpec:
    queue = deps.settings.queue_path(deps.project, deps.location)
    return EmailSpec(
        key=key,
        format=fmt,
        task_name=task_name or f"{queue}/tasks/{email_task_id(key)}",
        queue=deps.settings.queue,
        message_id=message_id(key, deps.settings.message_id_domain),
        run_id=run_id,
    )


def _unwanted(subscription: Subscription | None, key: DeliveryKey) -> str | None:
    if subscription is None:
        return "subscription deleted"
    delivery = subscription.delivery(key.delivery_id)
    if delivery is None:
        return f"delivery {key.delivery_id!r} removed from the subscription"
    if key.recipient not in {address.lower() for address in delivery.to}:
        return f"recipient removed from delivery {key.delivery_id!r}"
    return None


def _fail_without_sending(deps: DeliverDependencies, spec: EmailSpec, reason: str) -> DeliverReply:
    """Record ``failed`` with ``reason`` through the same claim, so a sent row stays sent."""
    claim = deps.store.begin_send(
        spec, lease=timedelta(seconds=deps.settings.sending_lease_seconds)
    )
    if not claim.may_send:
        return _not_claimed(claim, spec.key)
    assert claim.attempt is not None
    deps.store.mark_failed(spec.key, claim.attempt, reason)
    return DeliverReply(200, "refused", reason, spec.key, claim.attempt, spec.message_id)


def _not_claimed(claim: SendClaim, key: DeliveryKey) -> DeliverReply:
    row = claim.row
    if row.state == "sent":
        return DeliverReply(200, "already-sent", row.smtp_reply or "", key, None, row.message_id)
    if row.state == "failed":
        return DeliverReply(200, "already-failed", row.last_error or "", key, None, row.message_id)
    # Another attempt holds the row and its lease runs: answer "later", Cloud Tasks retries.
    return DeliverReply(
        503, "in-progress", f"held since {row.sending_since}", key, None, row.message_id
    )


def _envelope_sender(header: str) -> str:
    """The bare address of a ``Name <address>`` From header, for MAIL FROM."""
    from email.utils import parseaddr

    return parseaddr(header)[1] or header
