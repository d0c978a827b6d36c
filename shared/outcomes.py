"""The outcome state machine of one dispatch: what a task did, moving only forward.

Collectors report outcomes on ``dispatcher-results`` at least once and in any order: a
``started`` can arrive after its ``succeeded``, a redelivered ``failed`` of attempt 1 after
attempt 2 succeeded, the same report three times. The ledger row must end the same whatever the
order and however many copies arrive. That holds because every report maps to a **precedence
key** (:func:`precedence_key`), a string, and the row shows the report with the greatest key:
taking a maximum is commutative, associative and idempotent, so order and duplication cannot
matter. The ledger applies it in one conditional ``UPDATE`` (``WHERE new key > stored key``,
compared byte-wise), never read-then-write.

The order of keys, lowest first:

1. **not final** (``started``, and ``failed`` with attempts left): by attempt, then ``started``
   before ``failed`` within an attempt -- so a retry's ``started`` (attempt 3) replaces the
   failure of attempt 2, and a late ``started`` of attempt 2 does not replace that failure;
2. **lost**: written by maintenance reconcile for a task created long ago with no final outcome;
   it ends waiting on a task that will not report, yet any real final outcome still replaces it;
3. **final** (``failed`` with no attempts left or marked final by the collector, ``skipped``,
   ``succeeded``): ``succeeded`` > ``skipped`` > final ``failed`` whatever the attempts, so a
   later failure of a duplicate execution is recorded as an attempt but never undoes a success.

Ties (the same outcome of the same attempt reported twice with different details) are broken by
the rest of the report, so even then every delivery order picks the same report.

Two columns are not taken from the winning report but aggregated on their own, which is just as
order-free: ``execution_attempts`` is the greatest attempt seen and ``first_started_at`` the
earliest start seen. The last error is the error of the failure with the greatest
:func:`error_key` (highest attempt).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

Outcome = Literal["started", "succeeded", "failed", "skipped"]
ExecutionState = Literal["started", "succeeded", "failed", "skipped", "lost"]
OUTCOMES: Final = ("started", "succeeded", "failed", "skipped")
FINAL_STATES: Final = frozenset({"succeeded", "skipped", "lost"})

# Widths keep the keys comparable as plain strings (byte order = numeric order).
_ATTEMPT_DIGITS: Final = 10
_MS_DIGITS: Final = 12
_NOT_FINAL_RANK: Final = {"started": 0, "failed": 1}
_FINAL_RANK: Final = {"failed": 0, "skipped": 1, "succeeded": 2}
LOST_KEY: Final = "1"


@dataclass(frozen=True)
class Report:
    """One outcome as a collector reported it (a validated ``result.v1`` message)."""

    outcome: Outcome
    attempt: int
    reported_at: datetime
    final: bool = False
    duration_ms: int | None = None
    items: int | None = None
    error: str | None = None
    task_name: str | None = None

    @property
    def started_at(self) -> datetime:
        """When the attempt began: the report time, less its duration when that is known."""
        if self.duration_ms is None:
            return self.reported_at
        return self.reported_at - timedelta(milliseconds=self.duration_ms)


@dataclass(frozen=True)
class Transition:
    """What a report means for the row: its state, whether final, and its keys."""

    state: ExecutionState
    final: bool
    key: str
    error_key: str | None


def is_final(outcome: Outcome, attempt: int, *, final: bool, max_attempts: int) -> bool:
    """Whether nothing more will happen after this report.

    ``max_attempts`` is the queue's (``<= 0``: unlimited, as Cloud Tasks reads -1). A failure is
    final when the collector said so or when no attempt is left.
    """
    if outcome in ("succeeded", "skipped"):
        return True
    if outcome == "started":
        return False
    return final or (max_attempts > 0 and attempt >= max_attempts)


def transition(report: Report, *, max_attempts: int) -> Transition:
    """The state and precedence keys of ``report`` (module docstring)."""
    final = is_final(report.outcome, report.attempt, final=report.final, max_attempts=max_attempts)
    key = precedence_key(report.outcome, report.attempt, final=final, tiebreak=_tiebreak(report))
    error = (
        error_key(report.attempt, report.reported_at, report.error or "")
        if report.outcome == "failed" or report.error
        else None
    )
    return Transition(report.outcome, final, key, error)


def precedence_key(outcome: Outcome, attempt: int, *, final: bool, tiebreak: str = "") -> str:
    """The key whose maximum a dispatch row shows (module docstring for the order)."""
    a = f"{attempt:0{_ATTEMPT_DIGITS}d}"
    if final:
        return f"2|{_FINAL_RANK[outcome]}|{a}|{tiebreak}"
    return f"0|{a}|{_NOT_FINAL_RANK[outcome]}|{tiebreak}"


def error_key(attempt: int, reported_at: datetime, error: str) -> str:
    """Orders errors: the highest attempt's wins, then the latest report, then the text."""
    return f"{attempt:0{_ATTEMPT_DIGITS}d}|{_instant(reported_at)}|{_digest(error)}"


def _tiebreak(report: Report) -> str:
    def number(value: int | None) -> str:
        return "-" if value is None else f"{value:0{_MS_DIGITS}d}"

    return "|".join(
        [
            _instant(report.reported_at),
            number(report.duration_ms),
            number(report.items),
            _digest(report.error or ""),
            _digest(report.task_name or ""),
        ]
    )


def _instant(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ExecutionRow:
    """The execution columns of one dispatch row, as the ledger's conditional update leaves them.

    :func:`apply_report` is the same rule in Python: the tests check the SQL against it, and it
    is the shortest statement of what the row means.
    """

    state: ExecutionState | None = None
    final: bool = False
    attempts: int = 0
    key: str | None = None
    error_key: str | None = None
    first_started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: int | None = None
    items: int | None = None
    error: str | None = None
    reported_at: datetime | None = None


def apply_report(row: ExecutionRow, report: Report, *, max_attempts: int) -> ExecutionRow:
    """The row after ``report``: the greater key wins; attempts max, first start min."""
    step = transition(report, max_attempts=max_attempts)
    started = report.started_at
    first = started if row.first_started_at is None else min(row.first_started_at, started)
    attempts = max(row.attempts, report.attempt)
    error_wins = step.error_key is not None and (
        row.error_key is None or step.error_key > row.error_key
    )
    error, err_key = (report.error, step.error_key) if error_wins else (row.error, row.error_key)
    if row.key is not None and step.key <= row.key:
        return _replace_aggregates(row, attempts, first, error, err_key)
    return ExecutionRow(
        state=step.state,
        final=step.final,
        attempts=attempts,
        key=step.key,
        error_key=err_key,
        first_started_at=first,
        finished_at=report.reported_at if step.final else None,
        duration_ms=report.duration_ms,
        items=report.items,
        error=error,
        reported_at=report.reported_at,
    )


def _replace_aggregates(
    row: ExecutionRow,
    attempts: int,
    first: datetime | None,
    error: str | None,
    err_key: str | None,
) -> ExecutionRow:
    return replace(row, attempts=attempts, first_started_at=first, error=error, error_key=err_key)
