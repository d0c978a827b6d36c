"""Data access for the email-delivery transactions (``email_deliveries``, migration V3).

Kept beside :mod:`shared.ledger.repository` rather than inside it: the same pool, the same rules
(every method one short transaction; every claim one conditional write, never read-then-write),
a separate table.

The life of one row, and who moves it:

- the planner :meth:`EmailLedger.claim` s it (``INSERT ... ON CONFLICT DO NOTHING``), creates the
  Cloud Task under the stored ``task_name`` and marks it :meth:`task_created`;
- the deliver function :meth:`begin_send` s it: one conditional ``INSERT ... ON CONFLICT DO
  UPDATE ... WHERE`` that moves ``queued`` (or a ``sending`` row whose lease ran out) to
  ``sending`` and counts the attempt. Only the caller that gets a row back may talk to SMTP;
- after SMTP answers: :meth:`mark_sent` (accepted), :meth:`mark_retry` (4xx or no connection:
  back to ``queued`` for Cloud Tasks' next attempt) or :meth:`mark_failed` (5xx, final).

The deliver function may also meet a row that does not exist (an operator's hand-made task, or
one planned before a prune): :meth:`begin_send` then inserts it, so a replay typed with
``gcloud tasks create-http-task`` works and is still recorded once.
"""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import psycopg
from psycopg.rows import class_row
from psycopg_pool import ConnectionPool

from shared.delivery_key import DeliveryKey
from shared.email_render import SourceReport
from shared.ledger.repository import MAX_ERROR_CHARS, LedgerError, pooled_transaction

EmailState = Literal["queued", "sending", "sent", "failed"]
TaskState = Literal["claimed", "created", "failed"]

_COLUMNS = (
    "id, subscription_id, delivery_id, slot, recipient, format, run_id, task_name, queue, "
    "task_state, task_error, state, attempts, message_id, smtp_reply, last_error, "
    "sending_since, resumed, sent_at, failed_at, created_at, updated_at"
)
_KEY_WHERE = "subscription_id = %s AND delivery_id = %s AND slot = %s AND recipient = %s"


@dataclass(frozen=True)
class EmailSpec:
    """What the planner knows about one email before its Cloud Task exists."""

    key: DeliveryKey
    format: str
    task_name: str
    queue: str
    message_id: str
    run_id: int | None = None


@dataclass(frozen=True)
class EmailRow:
    """One row of ``email_deliveries``."""

    id: int
    subscription_id: str
    delivery_id: str
    slot: datetime
    recipient: str
    format: str
    run_id: int | None
    task_name: str
    queue: str
    task_state: str
    task_error: str | None
    state: str
    attempts: int
    message_id: str
    smtp_reply: str | None
    last_error: str | None
    sending_since: datetime | None
    resumed: bool
    sent_at: datetime | None
    failed_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @property
    def final(self) -> bool:
        """Sent or permanently failed: nothing more will be attempted."""
        return self.state in ("sent", "failed")


@dataclass(frozen=True)
class EmailClaim:
    """The planner's claim: the row, and whether this call inserted it."""

    row: EmailRow
    claimed: bool

    @property
    def must_create(self) -> bool:
        """(Re)create the Cloud Task: anything short of ``created``, unless already final."""
        return self.row.task_state != "created" and not self.row.final


@dataclass(frozen=True)
class SendClaim:
    """The deliver function's claim before SMTP.

    ``attempt`` is set when this call holds the row (``sending``): send, then mark the outcome
    with this attempt number. Otherwise ``row`` says why not: ``sent`` / ``failed`` (final:
    answer 200, send nothing) or ``sending`` held by another attempt whose lease still runs
    (answer "retry later").
    """

    row: EmailRow
    attempt: int | None

    @property
    def may_send(self) -> bool:
        return self.attempt is not None


def _error(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _key_params(key: DeliveryKey) -> tuple[Any, ...]:
    return (key.subscription_id, key.delivery_id, key.slot, key.recipient)


class EmailLedger:
    """The ``email_deliveries`` table on the ledger's connection pool."""

    def __init__(self, pool: ConnectionPool[psycopg.Connection[Any]]) -> None:
        self._pool = pool
        self._open_lock = threading.Lock()
        self._opened = False

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        if not self._opened:
            with self._open_lock:
                if not self._opened:
                    if self._pool.closed:
                        self._pool.open()
                    self._opened = True
        # The pool's connections are in autocommit mode: one transaction per call, as before.
        return pooled_transaction(self._pool)

    # -- planning ------------------------------------------------------------------------

    def claim(self, spec: EmailSpec) -> EmailClaim:
        """Claim the key for a Cloud Task, or find the row an earlier claim (or send) made."""
        key = spec.key
        with self._connection() as conn, conn.cursor(row_factory=class_row(EmailRow)) as cur:
            cur.execute(
                "INSERT INTO email_deliveries (subscription_id, delivery_id, slot, recipient, "
                "format, run_id, task_name, queue, message_id) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                f"ON CONFLICT ON CONSTRAINT email_deliveries_key DO NOTHING RETURNING {_COLUMNS}",
                (
                    *_key_params(key),
                    spec.format,
                    spec.run_id,
                    spec.task_name,
                    spec.queue,
                    spec.message_id,
                ),
            )
            row = cur.fetchone()
            if row is not None:
                return EmailClaim(row, claimed=True)
            # A fresh statement sees a concurrent winner's committed row.
            cur.execute(
                f"SELECT {_COLUMNS} FROM email_deliveries WHERE {_KEY_WHERE}", _key_params(key)
            )
            row = cur.fetchone()
        if row is None:
            raise LedgerError(f"email delivery {key.canonical()} vanished")
        return EmailClaim(row, claimed=False)

    def task_created(self, key: DeliveryKey) -> None:
        """Cloud Tasks accepted the task (or said ALREADY_EXISTS)."""
        with self._connection() as conn:
            conn.execute(
                "UPDATE email_deliveries SET task_state = 'created', task_error = NULL, "
                f"updated_at = now() WHERE {_KEY_WHERE}",
                _key_params(key),
            )

    def task_failed(self, key: DeliveryKey, error: str) -> None:
        """The task could not be created; the planner's redelivery tries again."""
        with self._connection() as conn:
            conn.execute(
                "UPDATE email_deliveries SET task_state = 'failed', task_error = %s, "
                f"updated_at = now() WHERE {_KEY_WHERE} AND task_state <> 'created'",
                (_error(error), *_key_params(key)),
            )

    # -- sending -------------------------------------------------------------------------

    def begin_send(self, spec: EmailSpec, *, lease: timedelta = timedelta(minutes=2)) -> SendClaim:
        """Take the row for one SMTP attempt, with one conditional write.

        Wins when the row is new, ``queued``, or ``sending`` with ``sending_since`` older than
        ``lease`` (its attempt died between claim and mark: the crash window). The lease must
        be longer than one SMTP conversation can last (the SMTP timeout), or a slow but living
        attempt could be overtaken and the email sent twice.
        """
        key = spec.key
        with self._connection() as conn, conn.cursor(row_factory=class_row(EmailRow)) as cur:
            cur.execute(
                "INSERT INTO email_deliveries AS e (subscription_id, delivery_id, slot, "
                "recipient, format, run_id, task_name, queue, message_id, state, attempts, "
                "sending_since, task_state) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, 'sending', 1, now(), 'created') "
                "ON CONFLICT ON CONSTRAINT email_deliveries_key DO UPDATE SET "
                "state = 'sending', attempts = e.attempts + 1, sending_since = now(), "
                # e.state is the row's state before this update.
                "resumed = (e.state = 'sending'), updated_at = now() "
                "WHERE e.state = 'queued' "
                "   OR (e.state = 'sending' AND e.sending_since < now() - %s) "
                f"RETURNING {_COLUMNS}",
                (
                    *_key_params(key),
                    spec.format,
                    spec.run_id,
                    spec.task_name,
                    spec.queue,
                    spec.message_id,
                    lease,
                ),
            )
            row = cur.fetchone()
            if row is not None:
                return SendClaim(row, attempt=row.attempts)
            cur.execute(
                f"SELECT {_COLUMNS} FROM email_deliveries WHERE {_KEY_WHERE}", _key_params(key)
            )
            row = cur.fetchone()
        if row is None:
            raise LedgerError(f"email delivery {key.canonical()} vanished")
        return SendClaim(row, attempt=None)

    def mark_sent(self, key: DeliveryKey, attempt: int, smtp_reply: str) -> EmailRow:
        """The SMTP server accepted the message. Final.

        Not fenced on ``attempt``: whichever attempt's email was accepted, the email did go
        out, and a later attempt must see ``sent``.
        """
        return self._update(
            "state = 'sent', sent_at = now(), smtp_reply = %s, sending_since = NULL, "
            "last_error = NULL",
            (_error(smtp_reply),),
            key,
            "state <> 'sent'",
        )

    def mark_retry(self, key: DeliveryKey, attempt: int, error: str) -> EmailRow:
        """A temporary refusal: back to ``queued`` for the next Cloud Tasks attempt.

        Fenced on ``attempt``: a stale attempt cannot undo a newer one's progress.
        """
        return self._update(
            "state = 'queued', sending_since = NULL, last_error = %s",
            (_error(error),),
            key,
            f"state = 'sending' AND attempts = {int(attempt)}",
        )

    def mark_failed(self, key: DeliveryKey, attempt: int, error: str) -> EmailRow:
        """A permanent refusal (SMTP 5xx): final, not retried."""
        return self._update(
            "state = 'failed', failed_at = now(), sending_since = NULL, last_error = %s",
            (_error(error),),
            key,
            f"state = 'sending' AND attempts = {int(attempt)}",
        )

    def _update(
        self, assignments: str, values: tuple[Any, ...], key: DeliveryKey, condition: str
    ) -> EmailRow:
        with self._connection() as conn, conn.cursor(row_factory=class_row(EmailRow)) as cur:
            cur.execute(
                f"UPDATE email_deliveries SET {assignments}, updated_at = now() "
                f"WHERE {_KEY_WHERE} AND {condition} RETURNING {_COLUMNS}",
                (*values, *_key_params(key)),
            )
            row = cur.fetchone()
            if row is None:
                # The condition did not hold: report the row as it is.
                cur.execute(
                    f"SELECT {_COLUMNS} FROM email_deliveries WHERE {_KEY_WHERE}", _key_params(key)
                )
                row = cur.fetchone()
        if row is None:
            raise LedgerError(f"email delivery {key.canonical()} vanished")
        return row

    # -- content -------------------------------------------------------------------------

    def collected(
        self, subscription_id: str, since: datetime, until: datetime, limit: int = 5000
    ) -> list[SourceReport]:
        """The subscription's dispatches with ``since <= slot < until``, oldest first.

        Served by the dispatch key's index (subscription_id, slot, source_id). A dispatch whose
        task was never created reports ``not-created`` with its last create error.
        """
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT slot, source_id, source_kind, "
                "CASE WHEN state <> 'created' THEN 'not-created' ELSE execution_state END, "
                "execution_final OR state <> 'created', items, "
                "coalesce(execution_error, last_error) "
                "FROM dispatches WHERE subscription_id = %s AND slot >= %s AND slot < %s "
                "ORDER BY slot, source_id LIMIT %s",
                (subscription_id, since, until, limit),
            ).fetchall()
        return [SourceReport(*row) for row in rows]

    # -- operators -----------------------------------------------------------------------

    def get(self, key: DeliveryKey) -> EmailRow | None:
        """The row of ``key``, or ``None``."""
        with self._connection() as conn, conn.cursor(row_factory=class_row(EmailRow)) as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM email_deliveries WHERE {_KEY_WHERE}", _key_params(key)
            )
            return cur.fetchone()

    def get_by_id(self, row_id: int) -> EmailRow | None:
        """The row with primary key ``row_id``, or ``None``."""
        with self._connection() as conn, conn.cursor(row_factory=class_row(EmailRow)) as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM email_deliveries WHERE id = %s", (row_id,))
            return cur.fetchone()

    def list(
        self,
        subscription_id: str | None = None,
        *,
        state: str | None = None,
        limit: int = 50,
    ) -> list[EmailRow]:
        """Rows newest slot first, optionally of one subscription and/or one state."""
        where: list[str] = []
        params: list[Any] = []
        if subscription_id is not None:
            where.append("subscription_id = %s")
            params.append(subscription_id)
        if state is not None:
            where.append("state = %s")
            params.append(state)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        with self._connection() as conn, conn.cursor(row_factory=class_row(EmailRow)) as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM email_deliveries {clause}"
                "ORDER BY slot DESC, delivery_id, recipient LIMIT %s",
                (*params, limit),
            )
            return cur.fetchall()
