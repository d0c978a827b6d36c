"""fanout: turn one due message into one Cloud Task per source, each exactly once.

For a due message (subscription, slot):

1. the subscription: the snapshot select put in the message (``subscription``: what select read
   of the document, with ``read_at``) when the message is a ``schedule`` / ``catch-up`` one and
   the snapshot is younger than ``snapshot_max_age_seconds`` (default 5 min); otherwise (manual,
   replay, hand-typed or older messages, or ``snapshot_max_age_seconds = 0``) one Firestore
   read. A scheduled run therefore costs one Firestore read in all: select's. Unknown,
   malformed or without sources → permanent error (dead-lettered with the reason).

   **Staleness window.** A pause or an edit an operator makes after select read the document
   is not seen by fanout for a snapshot up to ``snapshot_max_age_seconds`` old: the tasks of
   that one slot are still created. The collector's worker kit re-checks the subscription when
   the task executes and reports such a task ``skipped`` (:mod:`shared.worker`), so the cost
   of the race is a skipped task, not a collection. Reading Firestore in fanout did not close
   the race either: a pause landing right after fanout's read has the same effect. The next
   slot is not selected at all (a paused subscription is not due);
2. what is not dispatched:

   * a slot at or after ``ends_at``: never, whatever the reason (no zombie jobs); an
     **expired** subscription: no ``manual`` / ``replay`` run. A ``schedule`` / ``catch-up``
     message for an expired subscription does run: select marks the subscription expired right
     after publishing its last slot, so that message is expected to find it expired;
   * a **paused** subscription, for ``schedule`` / ``catch-up`` messages (a message selected
     just before the pause): skipped with a log line and acked.
   * Decision for a paused subscription and a ``manual`` / ``replay`` message: it **is**
     dispatched, with a warning log line. Somebody asked for that run explicitly (``dispatcher
     ... replay`` or ``gcloud pubsub topics publish``); pausing stops the schedule, not the
     operator.

3. the run is recorded and every source's dispatch key (subscription id, slot, source id) is
   claimed in the ledger (``INSERT ... ON CONFLICT DO NOTHING``), in one statement
   (:meth:`~shared.ledger.repository.Ledger.start_run`); a key already ``created`` is done,
   anything else (won now, or claimed/failed by an earlier attempt) is (re)created;
4. the tasks are created concurrently (a process-wide thread pool) under names derived from the
   dispatch keys (:mod:`shared.dispatch_key`); ALREADY_EXISTS means an earlier attempt landed
   and counts as created; successes are marked ``created``, failures ``failed`` (attempts + 1,
   the reason in ``last_error``), all in one statement after every create was attempted
   (:meth:`~shared.ledger.repository.Ledger.mark_dispatches`): two ledger round trips per due
   message. Then:

   * any **transient** failure (unavailable, timeout): the message is retried
     (:class:`~shared.errors.RetryableError`); the redelivery finds the created ones done and
     retries only the rest;
   * only **permanent** refusals left (:class:`~shared.errors.TaskRejectedError`: the queue does
     not exist, a missing grant, an invalid task): retrying cannot help, so the message is
     dead-lettered once with the reason (:class:`TasksRejectedError`) instead of being
     redelivered until Pub/Sub gives up without one. Tasks created in the same attempt stay
     created; a replay after the fix creates only the refused ones (their rows are ``failed``,
     not ``created``). A transient failure beside a refusal still retries first: the retry may
     create that one, and the refusal is dead-lettered on the attempt that has nothing else
     left to try.

Guard: Cloud Tasks refuses a schedule time more than 30 days ahead (INVALID_ARGUMENT). A slot
whose task would be scheduled further ahead than that is refused here
(:class:`SlotTooFarAheadError`, permanent) before anything is written to the ledger, so it leaves
no failed rows behind, only its dead letter.

A message without ``slot`` is a manual run: slot = its publish time truncated to the minute,
reason ``manual`` unless it says otherwise. A given slot is truncated to the minute too, so a
hand-typed ``09:00:30Z`` is the 09:00 slot and shares its dispatch keys.
"""

from __future__ import annotations

import contextvars
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from shared.config import ConfigError, Settings
from shared.contracts import validate
from shared.dal.records import StoredSubscription, TaskRequest
from shared.dispatch_key import DispatchKey, task_name
from shared.envelope import PushMessage, parse_rfc3339
from shared.errors import (
    InvalidRequestError,
    PermanentError,
    RetryableError,
    TaskRejectedError,
    UnknownSubscriptionError,
)
from shared.instants import format_instant, format_slot
from shared.ledger.repository import Claim, RunClaims, SourceSpec
from shared.scheduling import floor_minute, jitter_offset
from shared.subscription import InvalidSubscription, Source, Subscription

__all__ = [
    "MAX_SCHEDULE_AHEAD",
    "DispatchLedger",
    "FanoutDependencies",
    "FanoutResult",
    "InvalidSubscriptionDocumentError",
    "SlotTooFarAheadError",
    "SubscriptionReader",
    "TaskGateway",
    "TasksNotCreatedError",
    "TasksRejectedError",
    "UnknownSourceKindError",
    "build_task_request",
    "fanout",
    "skip_reason",
    "snapshot_usable",
]

logger = logging.getLogger(__name__)

_MAX_CREATE_WORKERS: Final = 16
_SCHEDULED_REASONS: Final = frozenset({"schedule", "catch-up"})
# Snapshot fields about the snapshot itself, not part of the subscription document.
_SNAPSHOT_ONLY: Final = frozenset({"read_at", "updated_at"})
#: The furthest ahead Cloud Tasks accepts a task's schedule time (documented quota).
MAX_SCHEDULE_AHEAD: Final = timedelta(days=30)


# -- errors ------------------------------------------------------------------------------------


class InvalidSubscriptionDocumentError(PermanentError):
    """The subscription document exists but is malformed (or has no sources)."""

    def __init__(self, subscription_id: str, error: InvalidSubscription) -> None:
        super().__init__(f"subscription {subscription_id!r} is invalid: {error}")
        self.subscription_id = subscription_id
        self.path = error.path

    def details(self) -> dict[str, str]:
        return {"path": self.path or "$", "value": self.subscription_id}


class UnknownSourceKindError(PermanentError):
    """A source's kind has no configured queue: nothing to send it to until config changes."""

    def __init__(self, subscription_id: str, source: Source, error: ConfigError) -> None:
        super().__init__(f"subscription {subscription_id!r}, source {source.id!r}: {error}")
        self.kind = source.kind

    def details(self) -> dict[str, str]:
        return {"rule": "queue_for", "value": self.kind}


class TasksNotCreatedError(RetryableError):
    """Some Cloud Tasks could not be created; the ledger marks them failed; redelivery retries."""


class TasksRejectedError(PermanentError):
    """Cloud Tasks refused some tasks for good; they are ``failed`` in the ledger, the others
    stay created, and the message is dead-lettered so that a replay after the fix finishes it."""

    def __init__(self, message: str, first: TaskRejectedError) -> None:
        super().__init__(message)
        self.first = first

    def details(self) -> dict[str, str]:
        return self.first.details()


class SlotTooFarAheadError(PermanentError):
    """The slot's task would be scheduled further ahead than Cloud Tasks accepts (30 days)."""

    def __init__(self, slot: datetime, schedule_time: datetime, now: datetime) -> None:
        days = (schedule_time - now) / timedelta(days=1)
        super().__init__(
            f"slot {format_slot(slot)} would schedule its tasks {days:.1f} days ahead "
            f"(at {format_instant(schedule_time)}); Cloud Tasks accepts at most "
            f"{MAX_SCHEDULE_AHEAD.days} days: publish it again closer to the slot"
        )
        self.slot = slot

    def details(self) -> dict[str, str]:
        return {"path": "$.slot", "rule": "max_schedule_ahead_30d", "value": format_slot(self.slot)}


# -- ports -------------------------------------------------------------------------------------


class SubscriptionReader(Protocol):
    """One document read."""

    def get(self, subscription_id: str) -> StoredSubscription | None:
        """The subscription document, or ``None``."""
        ...


class TaskGateway(Protocol):
    """Creates named Cloud Tasks."""

    def create(self, request: TaskRequest) -> object:
        """Create (or find already existing); raise RetryableError on a transient failure,
        :class:`~shared.errors.TaskRejectedError` on a refusal no retry can change."""
        ...


class DispatchLedger(Protocol):
    """The ledger calls fanout makes (see :class:`shared.ledger.repository.Ledger`)."""

    def start_run(
        self,
        subscription_id: str,
        slot: datetime,
        reason: str,
        sources: Sequence[SourceSpec],
        message_id: str | None = None,
    ) -> RunClaims:
        """Record (or find) the run of (subscription, slot) and claim every source's dispatch
        key, in one round trip."""
        ...

    def mark_dispatches(
        self, created: Sequence[int], failed: Sequence[tuple[int, str]] = ()
    ) -> tuple[int, int]:
        """Mark dispatches created, and others failed (attempts + 1), in one round trip."""
        ...


@dataclass(frozen=True)
class FanoutDependencies:
    """Everything fanout talks to (real ones from :func:`shared.wiring.fanout_dependencies`)."""

    settings: Settings
    store: SubscriptionReader
    tasks: TaskGateway
    ledger: DispatchLedger
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass
class FanoutResult:
    """What one due message did."""

    subscription_id: str
    slot: datetime
    reason: str
    skipped: str | None = None
    # Where the subscription came from: "snapshot" (the due message's) or "firestore".
    subscription_read: str | None = None
    created: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


# -- the use case ------------------------------------------------------------------------------


def _slot_of(payload: dict[str, Any], message: PushMessage, now: datetime) -> datetime:
    text = payload.get("slot")
    if isinstance(text, str):
        try:
            return floor_minute(parse_rfc3339(text))
        except ValueError as exc:
            raise InvalidRequestError(f"slot {text!r} is not RFC 3339: {exc}") from exc
    return floor_minute(message.publish_time or now)


def fanout(
    payload: dict[str, Any],
    message: PushMessage,
    *,
    deps: FanoutDependencies,
) -> FanoutResult:
    """Create one Cloud Task per source of the due subscription, exactly once per dispatch key.

    See the module docstring. Raises a :class:`~shared.errors.PermanentError` for an unknown or
    invalid subscription, a slot too far ahead, or tasks Cloud Tasks refused for good, and a
    :class:`~shared.errors.RetryableError` when a dependency failed or a task could not be
    created for a reason a retry may change.
    """
    subscription_id = str(payload["subscription_id"])
    now = deps.clock()
    slot = _slot_of(payload, message, now)
    reason = str(payload.get("reason") or "manual")
    result = FanoutResult(subscription_id, slot, reason)
    log: dict[str, Any] = {
        "subscription_id": subscription_id,
        "slot": format_slot(slot),
        "reason": reason,
    }

    subscription, result.subscription_read = _subscription(deps, payload, reason, now)
    log["subscription_read"] = result.subscription_read

    skip = skip_reason(subscription, slot, reason)
    if skip is not None:
        result.skipped = skip
        logger.info(
            "subscription %s, slot %s not dispatched: %s",
            subscription_id,
            format_slot(slot),
            skip,
            extra={**log, "decision": "skip", "skip_reason": skip},
        )
        return result
    if subscription.paused:
        logger.warning(
            "subscription %s is paused; dispatching the %s run anyway (asked for explicitly)",
            subscription_id,
            reason,
            extra={**log, "decision": "dispatch-paused"},
        )

    schedule_time = task_schedule_time(deps.settings, subscription, slot)
    if schedule_time - now > MAX_SCHEDULE_AHEAD:
        # Before any ledger write: Cloud Tasks would refuse every task of this slot.
        raise SlotTooFarAheadError(slot, schedule_time, now)
    specs = _source_specs(deps.settings, subscription, slot)
    by_source = {s.id: s for s in subscription.sources}

    if payload.get("dry_run"):
        logger.info(
            "dry run: subscription %s, slot %s would dispatch %d task(s)",
            subscription_id,
            format_slot(slot),
            len(specs),
            extra={**log, "decision": "would-dispatch", "tasks": [s.task_name for s in specs]},
        )
        result.skipped = "dry-run"
        return result

    started: RunClaims = deps.ledger.start_run(
        subscription_id, slot, reason, specs, message.message_id or None
    )
    run, claims = started.run, started.claims
    todo = [c for c in claims if c.must_create]
    result.already_done = [c.source_id for c in claims if not c.must_create]

    requests = [
        build_task_request(
            deps.settings,
            subscription,
            source=by_source[c.source_id],
            slot=c.slot,
            task_name=c.task_name,
            queue=c.queue,
            reason=run.reason,
            run_id=run.id,
            now=now,
            # Computed above for the message's slot, which is every claim's slot.
            schedule_time=schedule_time if c.slot == slot else None,
        )
        for c in todo
    ]
    outcomes = _create_all(deps.tasks, requests)

    created_ids: list[int] = []
    errors: list[tuple[Claim, RetryableError]] = []
    rejections: list[tuple[Claim, TaskRejectedError]] = []
    for claim, outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, RetryableError):
            errors.append((claim, outcome))
        elif isinstance(outcome, TaskRejectedError):
            rejections.append((claim, outcome))
        else:
            created_ids.append(claim.dispatch_id)
            result.created.append(claim.source_id)
    # The ledger shows every failure with its reason before the message is retried or
    # dead-lettered: it is where an operator looks first (dispatcher status, ledger dispatches).
    failed = [(claim.dispatch_id, failure.message) for claim, failure in [*errors, *rejections]]
    result.failed.extend(claim.source_id for claim, _ in [*errors, *rejections])
    if created_ids or failed:
        deps.ledger.mark_dispatches(created_ids, failed)

    logger.info(
        "subscription %s, slot %s: %d task(s) created, %d already done, %d failed",
        subscription_id,
        format_slot(slot),
        len(result.created),
        len(result.already_done),
        len(result.failed),
        extra={
            **log,
            "decision": "dispatched" if not result.failed else "partially-dispatched",
            "run_id": run.id,
            "created_sources": result.created,
            "done_sources": result.already_done,
            "failed_sources": result.failed,
        },
    )
    if errors:
        first = errors[0][1]
        raise TasksNotCreatedError(
            f"{len(errors)} of {len(todo)} task(s) for {subscription_id} @ {format_slot(slot)} "
            f"not created (first: {first.message})"
        ) from first
    if rejections:
        refused = rejections[0][1]
        raise TasksRejectedError(
            f"{len(rejections)} of {len(todo)} task(s) for {subscription_id} @ "
            f"{format_slot(slot)} refused by Cloud Tasks ({', '.join(result.failed)}; "
            f"{len(result.created)} created stay created, a replay after the fix creates only "
            f"the refused ones): {refused.message}",
            refused,
        ) from refused
    return result


def _subscription(
    deps: FanoutDependencies, payload: Mapping[str, Any], reason: str, now: datetime
) -> tuple[Subscription, str]:
    """The subscription to dispatch and where it came from (``snapshot`` or ``firestore``)."""
    subscription_id = str(payload["subscription_id"])
    snapshot = payload.get("subscription")
    if isinstance(snapshot, Mapping) and snapshot_usable(
        snapshot, reason, now, deps.settings.snapshot_max_age_seconds
    ):
        data = {k: v for k, v in snapshot.items() if k not in _SNAPSHOT_ONLY}
        try:
            return Subscription.from_document(subscription_id, data), "snapshot"
        except InvalidSubscription as exc:
            raise InvalidSubscriptionDocumentError(subscription_id, exc) from exc
    doc = deps.store.get(subscription_id)
    if doc is None:
        raise UnknownSubscriptionError(subscription_id)
    try:
        return Subscription.from_document(doc.id, doc.data), "firestore"
    except InvalidSubscription as exc:
        raise InvalidSubscriptionDocumentError(subscription_id, exc) from exc


def snapshot_usable(
    snapshot: Mapping[str, Any], reason: str, now: datetime, max_age_seconds: float
) -> bool:
    """Whether fanout may use a due message's snapshot instead of reading Firestore (module
    doc, 1.): a ``schedule`` / ``catch-up`` message whose snapshot was read at most
    ``max_age_seconds`` ago (a ``read_at`` as far in the future counts as stale too: clocks
    differ a little, not by minutes)."""
    if reason not in _SCHEDULED_REASONS or max_age_seconds <= 0:
        return False
    text = snapshot.get("read_at")
    if not isinstance(text, str):
        return False
    try:
        read_at = parse_rfc3339(text)
    except ValueError:
        return False
    return abs((now - read_at).total_seconds()) <= max_age_seconds


def skip_reason(subscription: Subscription, slot: datetime, reason: str) -> str | None:
    """Why a (subscription, slot, reason) is not dispatched now, or ``None`` (module doc, 2.)."""
    if subscription.ends_at is not None and slot >= subscription.ends_at:
        return "slot at or after ends_at"
    # select marks a subscription expired right after publishing its last slot, so a scheduled
    # message may well find it expired: its slot was selected before the deadline and runs.
    # Anything asked for by hand after expiry does not.
    if subscription.status == "expired" and reason not in _SCHEDULED_REASONS:
        return "expired"
    if subscription.paused and reason in _SCHEDULED_REASONS:
        return "paused"
    return None


def _source_specs(
    settings: Settings, subscription: Subscription, slot: datetime
) -> list[SourceSpec]:
    specs: list[SourceSpec] = []
    for source in subscription.sources:
        key = DispatchKey(subscription.id, slot, source.id)
        try:
            # The key's hash picks the kind's queue shard; the ledger stores the result, so a
            # retry or reconcile recreates the same name on the same queue.
            queue = settings.queue_path_for(source.kind, key)
        except ConfigError as exc:
            raise UnknownSourceKindError(subscription.id, source, exc) from exc
        specs.append(SourceSpec(source.id, source.kind, task_name(queue, key), queue))
    return specs


def build_task_request(
    settings: Settings,
    subscription: Subscription,
    *,
    source: Source,
    slot: datetime,
    task_name: str,
    queue: str,
    reason: str,
    run_id: int,
    now: datetime,
    schedule_time: datetime | None = None,
) -> TaskRequest:
    """The Cloud Task of one dispatch: body, collector URL, OIDC identity and schedule time.

    ``task_name`` and ``queue`` are the ones stored in the ledger row (a retry or maintenance
    ``reconcile`` recreates exactly what the first attempt tried); ``reason`` and ``run_id`` are
    the run's. ``schedule_time``, when the caller has it, is :func:`task_schedule_time` of the
    slot (fanout computes it once per message, not once per task). Raises
    :class:`~shared.errors.SchemaValidationError` if the body breaks the collector contract,
    :class:`~shared.config.ConfigError` for a kind without a collector.
    """
    slot = slot.astimezone(UTC)
    key = DispatchKey(subscription.id, slot, source.id)
    url = settings.collector_url_for(source.kind)
    body = {
        "dispatch_key": key.to_json(),
        "source": source.to_document(),
        "subscription": {"id": subscription.id, "name": subscription.name},
        "slot": key.slot_text,
        "reason": reason,
        # The stored name: a retry recreates exactly what the first attempt tried.
        "task_name": task_name.rsplit("/", 1)[-1],
        "run_id": run_id,
        "dispatched_at": format_instant(now),
    }
    # The body is ours alone; validating it turns a contract drift into a loud, permanent error
    # instead of collectors rejecting tasks one by one.
    validate("collector-task.v1.json", body)
    return TaskRequest(
        name=task_name,
        queue=queue,
        url=url,
        body=json.dumps(body, separators=(",", ":"), sort_keys=True).encode(),
        schedule_time=schedule_time or task_schedule_time(settings, subscription, slot),
        service_account=settings.collector_service_account,
        audience=url,
    )


def task_schedule_time(settings: Settings, subscription: Subscription, slot: datetime) -> datetime:
    """When the slot's tasks are due: the slot plus the subscription's deterministic jitter."""
    jitter = (
        subscription.jitter_seconds
        if subscription.jitter_seconds is not None
        else settings.default_jitter_seconds
    )
    slot = slot.astimezone(UTC)
    return slot + jitter_offset(subscription.id, slot, jitter)


def _create_all(
    tasks: TaskGateway, requests: Sequence[TaskRequest]
) -> list[object | RetryableError | TaskRejectedError]:
    """Create every task concurrently; each outcome is the gateway's answer or its error."""
    if not requests:
        return []

    def one(request: TaskRequest) -> object | RetryableError | TaskRejectedError:
        try:
            return tasks.create(request)
        except (RetryableError, TaskRejectedError) as exc:
            return exc

    # All but the first go to the process-wide pool; the first is created on this thread
    # meanwhile (a thread of its own would only add a hand-off).
    pool = _create_pool()
    futures: list[Future[object | RetryableError | TaskRejectedError]] = [
        pool.submit(contextvars.copy_context().run, one, r) for r in requests[1:]
    ]
    return [one(requests[0]), *(f.result() for f in futures)]


class _Pool:
    lock = threading.Lock()
    executor: ThreadPoolExecutor | None = None


def _create_pool() -> ThreadPoolExecutor:
    """The process-wide pool of create threads, started on first use and kept (a pool per
    message cost a thread start and join per task). Its tasks never wait on the pool itself,
    so concurrent messages sharing it cannot deadlock; they only queue behind each other."""
    if _Pool.executor is None:
        with _Pool.lock:
            if _Pool.executor is None:
                _Pool.executor = ThreadPoolExecutor(_MAX_CREATE_WORKERS, "fanout-create")
    return _Pool.executor
