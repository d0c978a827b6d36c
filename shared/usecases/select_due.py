"""select: answer a tick by publishing one due message per due slot, then advance ``next_run_at``.

Flow for a tick at time ``T`` (the payload's ``time``, else the message's publish time, which
Pub/Sub keeps across redeliveries, so a redelivered tick is the same tick):

1. every shard (or the one the tick names) is queried concurrently for its due documents
   (``next_run_at <= T``, active, not paused), a page at a time;
2. for each document, :func:`shared.scheduling.plan_tick` decides which slots to publish
   (``schedule`` / ``catch-up``), which to drop (catch-up policy, logged) and the next
   ``next_run_at`` (``None``: expired). Each due message carries the snapshot of the document
   select read (``subscription``: name, schedule, sources, ends_at, jitter, its update time and
   ``read_at``), so fanout need not read it again (one Firestore read per due subscription;
   the staleness window is documented in :mod:`shared.usecases.fanout`). A snapshot that would
   make the message larger than :data:`MAX_SNAPSHOT_MESSAGE_BYTES` is left out;
3. the page's due messages are published and **every** publish future is waited on; a failure
   raises :class:`~shared.errors.RetryableError` before any document of that page is written;
4. the page's planned documents are advanced together (one BatchWrite per page, not atomic),
   each write conditioned on its own document's ``update_time`` as read and answered on its own.

Invariant: **no slot is ever lost; a slot can be published more than once.**

Let ``N`` be a subscription's stored ``next_run_at``. Claim: every slot ``s < N`` of the
subscription was, by some tick, either published on ``dispatcher-due`` (confirmed by Pub/Sub) or
deliberately dropped by its catch-up policy with a log line. Proof, by induction on the writes
to ``N``:

* ``N`` changes only through :meth:`advance_many` here (or an operator, see below). Our write of
  ``N -> N'`` happens only after every message of ``plan_tick(N, T)`` for that document was
  confirmed (step 3 precedes step 4, and a failed publish aborts before step 4).
* ``plan_tick``'s own invariant (:mod:`shared.scheduling.catchup`): the plan from ``N`` at ``T``
  puts every slot in ``[N, T]`` into exactly one of publish / dropped / dropped-range, and
  ``N'`` is the first slot after ``T``. So once ``N'`` is stored, every slot below ``N'`` is
  accounted for.
* Each document's write is conditional on that document being unchanged since it was read,
  i.e. on ``N`` still being the stored value; batching changes the number of RPCs, not the
  conditions (a conflicting document fails alone, the others of the batch still apply). A
  write therefore never replaces a value it did not plan from: when two ticks overlap, the
  loser's write fails (logged, harmless) and the winner's plan covered everything up to the
  value it stored; neither can skip an interval. An operator's edit (pause, new schedule,
  recompute) also makes our write fail, and their value stands.
* Any failure between publishing and writing (crash, timeout, failed write) leaves ``N`` where
  it was for every document whose write did not apply (those of the page that did apply hold
  values planned as above); the redelivered tick, or the next one, plans again from ``N``.
  Missed ticks are the same case: the next tick plans from the old ``N`` and the catch-up
  policy decides. Replaying the tick of a missed minute (explicit ``time``) before a later
  tick ran dispatches what was missed; after it, ``T < N`` and the replay plans nothing.
* Paging cannot skip a document: pages resume after the last document's (``next_run_at``, id)
  position, and a document only leaves the result set by being advanced.

Duplicates are possible by the same reasoning (publish confirmed, then the write failed or lost a
race; overlapping ticks; Pub/Sub redelivering a due message). Every duplicate carries the same
(subscription, slot), so fanout derives the same dispatch keys: the ledger's unique key and the
Cloud Task names absorb them, and each (subscription, slot, source) is dispatched exactly once.

Scheduled digests ride the same tick, after collection: :func:`select_digests_of_tick` runs
:func:`shared.usecases.select_digests.run_digests` for the tick's time (not on ``dry_run``
ticks, nor on ticks naming a shard other than 0: digests are not sharded). Their failures never
stop collection, which has finished (its messages confirmed, its documents advanced) before the
digests start, and are never silently acknowledged:

* every failed digest is one ERROR line (``decision: digest-failed``, the subscription, the
  delivery, the reason class, ``retryable``), and its schedule is not advanced, so it stays due;
* a failure a retry could cure (Firestore or Cloud Tasks unavailable, or an unexpected
  exception, as the handler treats those) fails the tick with a
  :class:`DigestsFailedError` (retryable, HTTP 5xx) once everything else is done: Pub/Sub
  redelivers the tick (10-60 s backoff, 5 attempts, then the tick's dead-letter topic). The
  redelivery is cheap and harmless: collection finds its documents already advanced (or
  publishes duplicates the dispatch keys absorb), and digest planning is idempotent (tasks
  named from the delivery key; the deliver function's row allows one send per key);
* a permanent failure (Cloud Tasks refused the email task, a malformed subscription) does not
  fail the tick: redelivering it cannot help, and dead-lettering a valid tick would be wrong.
  Every following tick tries the still-due schedule again, one ERROR line each, until it is
  fixed or the slot is older than the digest's ``max_age`` (then dropped with a log line; the
  next slot reports the period).

The next minute's tick is a retry too, whatever happened: a due schedule stays due.

Paused and expired subscriptions are not due (the query excludes them). ``dry_run`` ticks log
what would be published and write nothing.

Guard: a tick whose explicit ``time`` is more than ``max_tick_skew_seconds`` (default 5 min)
ahead of the clock is refused before anything is read (:class:`TickTooFarAheadError`,
dead-lettered with its reason). Processing it would be correct by the rules above and still a
disaster: every due document's ``next_run_at`` would move past that time, and every slot in
between would be dropped by the catch-up policy. A ``dry_run`` tick writes nothing, so it may
look ahead as far as it likes. The publish time is Pub/Sub's clock, not typed by hand, and is
not checked.
"""

from __future__ import annotations

import contextvars
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from shared.config import Settings
from shared.contracts import get_contract
from shared.dal.records import Advance, OutboundMessage, StoredSubscription
from shared.envelope import PushMessage, parse_rfc3339
from shared.errors import DispatcherError, InvalidRequestError, PermanentError, RetryableError
from shared.instants import format_instant, format_slot
from shared.scheduling import TickPlan, plan_tick
from shared.subscription import InvalidSubscription, Subscription
from shared.usecases.select_digests import DigestDependencies, DigestTickResult, run_digests

__all__ = [
    "MAX_SNAPSHOT_MESSAGE_BYTES",
    "DigestsFailedError",
    "DuePublisher",
    "SelectDependencies",
    "SelectResult",
    "SubscriptionDueStore",
    "TickTooFarAheadError",
    "check_tick_skew",
    "select_due",
]

logger = logging.getLogger(__name__)

_MAX_SHARD_WORKERS = 8
#: A due message carries the subscription snapshot only up to this size (Pub/Sub takes 10 MB,
#: the functions refuse more than max_payload_bytes, 64 KiB by default); a larger subscription
#: is sent without it and fanout reads the document.
MAX_SNAPSHOT_MESSAGE_BYTES = 16 * 1024

_T = TypeVar("_T")


class TickTooFarAheadError(PermanentError):
    """A tick's ``time`` is further ahead of now than ``max_tick_skew_seconds`` allows."""

    def __init__(self, tick: datetime, now: datetime, skew_seconds: float) -> None:
        ahead = tick - now
        super().__init__(
            f"tick time {format_slot(tick)} is {_duration(ahead)} ahead of now "
            f"({format_slot(now)}), more than max_tick_skew_seconds={skew_seconds:g}: processing "
            "it would move every due next_run_at past it and skip every slot in between "
            "(a dry_run tick may look ahead)"
        )
        self.tick = tick

    def details(self) -> dict[str, str]:
        return {"path": "$.time", "rule": "max_tick_skew_seconds", "value": format_slot(self.tick)}


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 60}m {seconds % 60}s"


def check_tick_skew(tick: datetime, now: datetime, skew_seconds: float) -> None:
    """Raise :class:`TickTooFarAheadError` if ``tick`` is more than ``skew_seconds`` ahead."""
    if tick - now > timedelta(seconds=skew_seconds):
        raise TickTooFarAheadError(tick, now, skew_seconds)


class DigestsFailedError(RetryableError):
    """Scheduled digests of a tick failed in a way a redelivery of the tick could cure."""

    def __init__(self, tick: datetime, failures: Sequence[str]) -> None:
        shown = "; ".join(failures[:3]) + (
            f"; and {len(failures) - 3} more" if len(failures) > 3 else ""
        )
        super().__init__(
            f"tick {format_slot(tick)}: {len(failures)} digest failure(s), collection done: {shown}"
        )


class SubscriptionDueStore(Protocol):
    """What select needs from the ``subscriptions`` collection."""

    def due_page(
        self,
        shard: int,
        tick_time: datetime,
        limit: int,
        after: StoredSubscription | None = None,
    ) -> Sequence[StoredSubscription]:
        """Up to ``limit`` due documents of ``shard`` by ``next_run_at``, after ``after``."""
        ...

    def advance_many(self, items: Sequence[Advance], *, now: datetime) -> list[bool]:
        """Conditionally store each item's ``next_run_at`` (or expire it); one outcome per item,
        in order: False if that document changed since it was read.

        Raises :class:`~shared.errors.RetryableError` when any write failed otherwise (the
        others may have applied).
        """
        ...


class DuePublisher(Protocol):
    """Publishes due messages and waits until Pub/Sub confirmed every one."""

    def publish(self, messages: Sequence[OutboundMessage]) -> list[str]:
        """Publish all; raise :class:`~shared.errors.RetryableError` if any failed."""
        ...


@dataclass(frozen=True)
class SelectDependencies:
    """Everything select talks to (real ones from :func:`shared.wiring.select_dependencies`)."""

    settings: Settings
    store: SubscriptionDueStore
    publisher: DuePublisher
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    # Scheduled digests on the tick; None leaves them out (benchmarks, collection-only tests).
    digests: DigestDependencies | None = None


@dataclass
class SelectResult:
    """What one tick did (for tests, benchmarks and the summary log line)."""

    tick_time: datetime
    dry_run: bool
    read: int = 0
    published: int = 0
    dropped: int = 0
    advanced: int = 0
    expired: int = 0
    conflicts: int = 0
    invalid: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    digests: DigestTickResult | None = None

    def add(self, other: SelectResult) -> None:
        """Fold a shard's counts into this total."""
        self.read += other.read
        self.published += other.published
        self.dropped += other.dropped
        self.advanced += other.advanced
        self.expired += other.expired
        self.conflicts += other.conflicts
        self.invalid += other.invalid
        self.messages.extend(other.messages)


def _in_context(pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: Any) -> Future[_T]:
    # Worker threads do not inherit contextvars; the log context (event id, topic) must follow.
    return pool.submit(contextvars.copy_context().run, fn, *args)


def tick_time_of(payload: dict[str, Any], message: PushMessage, now: datetime) -> datetime:
    """The instant a tick selects for: ``time``, else the publish time, else ``now``."""
    text = payload.get("time")
    if isinstance(text, str):
        try:
            return parse_rfc3339(text).astimezone(UTC)
        except ValueError as exc:
            raise InvalidRequestError(f"tick time {text!r} is not RFC 3339: {exc}") from exc
    if message.publish_time is not None:
        return message.publish_time.astimezone(UTC)
    return now.astimezone(UTC)


def select_due(
    payload: dict[str, Any],
    message: PushMessage,
    *,
    deps: SelectDependencies,
) -> SelectResult:
    """Select the due subscriptions of a tick and publish their due messages (module docstring).

    Raises :class:`~shared.errors.InvalidRequestError` (permanent) for a shard outside the
    configured count, :class:`TickTooFarAheadError` (permanent) for a ``time`` too far ahead,
    and :class:`~shared.errors.RetryableError` when Firestore or Pub/Sub
    failed -- after every shard has finished, so the other shards' work is kept.
    """
    settings = deps.settings
    now = deps.clock()
    tick = tick_time_of(payload, message, now)
    dry_run = bool(payload.get("dry_run", False))
    if isinstance(payload.get("time"), str) and not dry_run:
        check_tick_skew(tick, now, settings.max_tick_skew_seconds)
    shard = payload.get("shard")
    if shard is not None and not 0 <= int(shard) < settings.shard_count:
        raise InvalidRequestError(
            f"shard {shard} is outside 0..{settings.shard_count - 1} (dispatcher.shard_count)"
        )
    shards = [int(shard)] if shard is not None else list(range(settings.shard_count))
    total = SelectResult(tick_time=tick, dry_run=dry_run)
    errors: list[RetryableError] = []
    with ThreadPoolExecutor(min(len(shards), _MAX_SHARD_WORKERS), "select-shard") as shard_pool:
        ctx = _Tick(deps, tick, dry_run, message.message_id)
        futures = {s: _in_context(shard_pool, _select_shard, ctx, s) for s in shards}
        for s, future in futures.items():
            try:
                total.add(future.result())
            except RetryableError as exc:
                logger.warning(
                    "shard %d failed: %s", s, exc.message, extra={"shard": s, "decision": "retry"}
                )
                errors.append(exc)
    if deps.digests is not None and not dry_run and shard in (None, 0):
        # After collection, whatever it did: a shard's failure must not hold up the digests,
        # nor a digest's failure the collection (module docstring).
        total.digests, digest_error = select_digests_of_tick(deps.digests, tick)
        if digest_error is not None:
            errors.append(digest_error)
    logger.info(
        "tick %s: %d due read, %d published, %d dropped, %d advanced, %d expired, %d conflicts%s",
        format_slot(tick),
        total.read,
        total.published,
        total.dropped,
        total.advanced,
        total.expired,
        total.conflicts,
        " (dry run: nothing published or written)" if dry_run else "",
        extra={
            "tick_time": format_slot(tick),
            "dry_run": dry_run,
            "read": total.read,
            "published": total.published,
            "advanced": total.advanced,
            "shards": len(shards),
            **_digest_counts(total.digests),
        },
    )
    if errors:
        raise errors[0]
    return total


def select_digests_of_tick(
    deps: DigestDependencies, tick: datetime
) -> tuple[DigestTickResult, RetryableError | None]:
    """Run the tick's digest path; what it did, and the error to fail the tick with, if any.

    Permanent failures are logged (by the digest path, one line each) and not returned: see
    the module docstring for why the tick is acknowledged then.
    """
    try:
        result = run_digests(tick, deps)
    except Exception as exc:  # the due query failed, or the planner could not be built
        reason = exc.message if isinstance(exc, DispatcherError) else f"{type(exc).__name__}: {exc}"
        logger.error(
            "digests of tick %s not selected: %s",
            format_slot(tick),
            reason,
            exc_info=not isinstance(exc, DispatcherError),
            extra={
                "tick_time": format_slot(tick),
                "decision": "digest-failed",
                "reason_class": type(exc).__name__,
                "retryable": not isinstance(exc, PermanentError),
            },
        )
        if isinstance(exc, PermanentError):
            return DigestTickResult(), None
        return DigestTickResult(), DigestsFailedError(tick, [reason])
    retryable = [
        f"{subscription_id}/{delivery_id}: {error.message}"
        for subscription_id, delivery_id, error in result.failed
        if error.retryable
    ]
    return result, DigestsFailedError(tick, retryable) if retryable else None


def _digest_counts(result: DigestTickResult | None) -> dict[str, int]:
    if result is None:
        return {}
    return {
        "digests_planned": len(result.planned),
        "digests_dropped": len(result.dropped),
        "digests_retired": len(result.retired),
        "digests_failed": len(result.failed),
    }


@dataclass(frozen=True)
class _Tick:
    """One tick being processed: what every shard worker needs."""

    deps: SelectDependencies
    time: datetime
    dry_run: bool
    tick_id: str


def _select_shard(ctx: _Tick, shard: int) -> SelectResult:
    result = SelectResult(tick_time=ctx.time, dry_run=ctx.dry_run)
    page_size = max(1, ctx.deps.settings.firestore_page_size)
    after: StoredSubscription | None = None
    while True:
        page = list(ctx.deps.store.due_page(shard, ctx.time, page_size, after))
        result.read += len(page)
        if page:
            _process_page(ctx, page, result)
        if len(page) < page_size:
            return result
        after = page[-1]


def _process_page(ctx: _Tick, page: Sequence[StoredSubscription], result: SelectResult) -> None:
    deps, tick, dry_run, tick_id = ctx.deps, ctx.time, ctx.dry_run, ctx.tick_id
    read_at = format_instant(deps.clock())
    planned: list[tuple[StoredSubscription, Subscription, TickPlan]] = []
    outbound: list[OutboundMessage] = []
    for doc in page:
        try:
            subscription = Subscription.from_document(doc.id, doc.data)
        except InvalidSubscription as exc:
            # A broken document must not hold up the others; it stays due and keeps being
            # reported every tick until someone fixes it.
            result.invalid += 1
            logger.error(
                "subscription %s is invalid, not scheduled: %s",
                doc.id,
                exc,
                extra={"subscription_id": doc.id, "decision": "invalid", "path": exc.path},
            )
            continue
        plan = plan_tick(subscription, subscription.next_run_at, tick)
        planned.append((doc, subscription, plan))
        snapshot = _snapshot(subscription, doc, read_at) if plan.publish else None
        for slot in plan.publish:
            body: dict[str, Any] = {
                "subscription_id": subscription.id,
                "slot": format_slot(slot.slot),
                "reason": slot.reason,
            }
            if tick_id:
                body["tick_id"] = tick_id[:200]
            data = _encode(body, snapshot)
            result.messages.append(body)
            outbound.append(
                OutboundMessage(
                    data=data,
                    attributes={"subscription_id": subscription.id, "slot": body["slot"]},
                )
            )
        result.published += len(plan.publish)
        result.dropped += len(plan.dropped)
        _log_plan(subscription, plan, dry_run)

    if dry_run:
        return
    # Step 3 before step 4: nothing is advanced unless every due message of the page is out.
    deps.publisher.publish(outbound)

    advancing = [entry for entry in planned if entry[2].advanced]
    if not advancing:
        return
    # One call for the page. A failure raises for the whole page: the shard's error is reported
    # once the other shards finish, and the redelivered tick plans again from what was not
    # written.
    written = deps.store.advance_many(
        [Advance(doc, plan.next_run_at, plan.expired) for doc, _, plan in advancing],
        now=deps.clock(),
    )
    for (_, subscription, plan), ok in zip(advancing, written, strict=True):
        if not ok:
            result.conflicts += 1
            logger.info(
                "subscription %s changed since it was read (overlapping tick or an edit); "
                "its next_run_at is left to the other writer",
                subscription.id,
                extra={"subscription_id": subscription.id, "decision": "conflict"},
            )
        elif plan.expired:
            result.expired += 1
            logger.info(
                "subscription %s expired: no slot left before ends_at",
                subscription.id,
                extra={"subscription_id": subscription.id, "decision": "expired"},
            )
        else:
            result.advanced += 1


def _snapshot(subscription: Subscription, doc: StoredSubscription, read_at: str) -> dict[str, Any]:
    """What fanout needs of the document, as select read it (due.v1.json ``subscription``)."""
    snapshot: dict[str, Any] = {
        "read_at": read_at,
        "name": subscription.name,
        "status": subscription.status,
        "paused": subscription.paused,
        "schedule": subscription.schedule.to_document(),
        "sources": [source.to_document() for source in subscription.sources],
    }
    if doc.update_time is not None:
        snapshot["updated_at"] = format_instant(doc.update_time)
    if subscription.ends_at is not None:
        snapshot["ends_at"] = format_instant(subscription.ends_at)
    if subscription.jitter_seconds is not None:
        snapshot["jitter_seconds"] = subscription.jitter_seconds
    return snapshot


def _encode(body: dict[str, Any], snapshot: dict[str, Any] | None) -> bytes:
    """The due message's bytes: with the snapshot when it keeps the message within
    :data:`MAX_SNAPSHOT_MESSAGE_BYTES` and satisfies the contract, else without (fanout then
    reads Firestore, as before). The message is valid either way: fanout's contract check must
    never dead-letter a due message because of what select added."""
    if snapshot is not None:
        message = {**body, "subscription": snapshot}
        try:
            data = json.dumps(message, separators=(",", ":")).encode()
        except (TypeError, ValueError):  # a params value JSON cannot carry
            pass
        else:
            # The dict itself is checked, not json.loads(data): once dumps accepted it, it holds
            # only what Firestore's to_dict and our to_document build (dicts with str keys,
            # lists, str, int, float, bool, None), which the round trip gives back unchanged.
            if len(data) <= MAX_SNAPSHOT_MESSAGE_BYTES and not get_contract("due.v1.json").issues(
                message
            ):
                return data
    return json.dumps(body, separators=(",", ":")).encode()


def _log_plan(subscription: Subscription, plan: TickPlan, dry_run: bool) -> None:
    extra: dict[str, Any] = {
        "subscription_id": subscription.id,
        "decision": "would-publish" if dry_run else "publish",
        "slots": [f"{format_slot(p.slot)}:{p.reason}" for p in plan.publish],
        "next_run_at": None if plan.next_run_at is None else format_slot(plan.next_run_at),
    }
    if plan.dropped:
        extra["dropped"] = [f"{format_slot(d.slot)}:{d.reason}" for d in plan.dropped]
    if plan.dropped_range is not None:
        start, end = plan.dropped_range
        extra["dropped_range"] = [format_slot(start), format_slot(end)]
    logger.info(
        "subscription %s: %s %d slot(s), dropped %d, next run %s",
        subscription.id,
        "would publish" if dry_run else "publishing",
        len(plan.publish),
        len(plan.dropped) + (1 if plan.dropped_range else 0),
        extra["next_run_at"] or "none (expires)",
        extra=extra,
    )
