"""Maintenance jobs (topic ``dispatcher-maintenance``, ``{"job": ...}``).

* ``expire``: subscriptions whose ``ends_at`` has passed get ``status: expired`` and no
  ``next_run_at`` (no zombie jobs).
* ``prune-ledger``: ledger runs (and their dispatches) older than ``older_than_days``, default the
  configured ``ledger_retention_days``.
* ``reconcile``: dispatches stuck in ``claimed`` or ``failed`` for ``older_than_minutes`` are
  created again under their stored task name and queue; ALREADY_EXISTS means the earlier attempt
  landed and counts as done (:mod:`shared.ops.reconcile`, which also says what is skipped).
* ``recompute-next-run``: ``next_run_at`` (and ``shard``) recomputed from the schedule, for one
  subscription or all, after schedule edits or a change of ``shard_count``; the subscription's
  digest schedules brought in step with its deliveries and put back on their cron.

Every job is idempotent (a second run finds nothing left to change), honours ``dry_run``, and
ends with exactly one structured log line carrying its counts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import timedelta
from typing import Any

from shared.dal.records import DigestSchedule, StoreConflict, StoredSubscription
from shared.envelope import PushMessage
from shared.errors import InvalidRequestError
from shared.ops import runtime
from shared.ops.delivery_schedules import ScheduleAdmin, sync_delivery_schedules
from shared.ops.jobs import JobContext
from shared.ops.reconcile import reconcile_stuck
from shared.ops.store import SubscriptionStore, iter_all
from shared.ops.subscriptions import recomputed_next_run
from shared.subscription import InvalidSubscription, Subscription, shard_for

__all__ = ["JOBS", "JobContext", "run_job", "run_maintenance"]

logger = logging.getLogger(__name__)

JOBS = ("expire", "prune-ledger", "reconcile", "recompute-next-run")
DEFAULT_EXPIRE_LIMIT = 10_000
DEFAULT_RECONCILE_MINUTES = 60


def run_maintenance(payload: dict[str, Any], message: PushMessage) -> None:
    """Use case of the maintenance function: run ``payload["job"]`` and log its counts."""
    from shared.config import get_settings

    job = str(payload["job"])
    ctx = JobContext(
        settings=get_settings(),
        now=runtime.now(),
        store_factory=runtime.store,
        ledger_factory=runtime.ledger,
        dry_run=bool(payload.get("dry_run", False)),
    )
    run_job(job, payload, ctx)


def run_job(job: str, arguments: Mapping[str, Any], ctx: JobContext) -> dict[str, int]:
    """Run one job; returns its counts (also logged as one structured line)."""
    handler = _HANDLERS.get(job)
    if handler is None:
        raise InvalidRequestError(f"unknown maintenance job {job!r} (known: {', '.join(JOBS)})")
    # The payload's dry_run counts whoever built the context: a dry run must never write.
    ctx.dry_run = ctx.dry_run or bool(arguments.get("dry_run", False))
    started = time.monotonic()
    handler(arguments, ctx)
    logger.info(
        "maintenance %s%s: %s",
        job,
        " (dry run)" if ctx.dry_run else "",
        ", ".join(f"{k}={v}" for k, v in sorted(ctx.counts.items())) or "nothing to do",
        extra={
            "job": job,
            "dry_run": ctx.dry_run,
            "counts": dict(ctx.counts),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        },
    )
    return dict(ctx.counts)


# --- expire -----------------------------------------------------------------------------------


def _expire(arguments: Mapping[str, Any], ctx: JobContext) -> None:
    limit = int(arguments.get("limit", DEFAULT_EXPIRE_LIMIT))
    page_size = min(ctx.settings.firestore_page_size, limit)
    ctx.counts.update({"expired": 0, "conflicts": 0})
    with runtime.dependency("firestore"):
        store = ctx.store_factory()
        seen: set[str] = set()
        while len(seen) < limit:
            page = store.active_ending_by(ctx.now, min(page_size, limit - len(seen)))
            fresh = [doc for doc in page if doc.id not in seen]
            if not fresh:
                return
            for doc in fresh:
                seen.add(doc.id)
                if ctx.dry_run:
                    ctx.count("expired")
                    continue
                try:
                    store.update(
                        doc.id,
                        {"status": "expired", "next_run_at": None, "updated_at": ctx.now},
                        if_updated_at=doc.update_time,
                    )
                except StoreConflict:
                    # Changed meanwhile (an edit, a tick): the next run looks at it again.
                    ctx.count("conflicts")
                    continue
                ctx.count("expired")
            if ctx.dry_run or len(page) < page_size:
                return


# --- prune-ledger -----------------------------------------------------------------------------


def _prune(arguments: Mapping[str, Any], ctx: JobContext) -> None:
    days = int(arguments.get("older_than_days") or ctx.settings.ledger_retention_days)
    before = ctx.now - timedelta(days=days)
    with runtime.dependency("postgresql"):
        ledger = ctx.ledger_factory()
        if ctx.dry_run:
            if ledger.pool.closed:
                ledger.pool.open()
            with ledger.pool.connection() as conn:
                row = conn.execute(
                    "SELECT count(*), (SELECT count(*) FROM dispatches d "
                    "  JOIN runs r ON r.id = d.run_id WHERE r.created_at < %s) "
                    "FROM runs WHERE created_at < %s",
                    (before, before),
                ).fetchone()
            runs, dispatches = (int(row[0]), int(row[1])) if row else (0, 0)
        else:
            pruned = ledger.prune(before)
            runs, dispatches = pruned.runs, pruned.dispatches
    ctx.counts.update({"runs": runs, "dispatches": dispatches, "older_than_days": days})


# --- recompute-next-run -----------------------------------------------------------------------


def _recompute(arguments: Mapping[str, Any], ctx: JobContext) -> None:
    for key in ("updated", "unchanged", "skipped", "expired", "invalid", "conflicts", *_DIGESTS):
        ctx.counts[key] = 0
    with runtime.dependency("firestore"):
        store = ctx.store_factory()
        schedules: ScheduleAdmin = ctx.schedules_factory()
        if ctx.dry_run:
            schedules = _ReadOnlySchedules(schedules)
        only = arguments.get("subscription_id")
        if only is not None:
            doc = store.get(str(only))
            if doc is None:
                ctx.count("missing")
                # Deleted behind the admin's back (the console): its digests must not go on.
                _recompute_digests(schedules, str(only), None, ctx)
                return
            _recompute_one(store, schedules, doc, ctx)
            return
        for page in iter_all(store, ctx.settings.firestore_page_size):
            for doc in page:
                _recompute_one(store, schedules, doc, ctx)


def _recompute_one(
    store: SubscriptionStore, schedules: ScheduleAdmin, doc: StoredSubscription, ctx: JobContext
) -> None:
    try:
        subscription = Subscription.from_document(doc.id, doc.data)
    except InvalidSubscription as exc:
        logger.warning(
            "subscription %s is malformed, not recomputed: %s",
            doc.id,
            exc,
            extra={"subscription_id": doc.id, "problem": str(exc)},
        )
        ctx.count("invalid")
        return
    after = _recompute_collection(store, doc, subscription, ctx)
    _recompute_digests(schedules, doc.id, after, ctx)


def _recompute_collection(
    store: SubscriptionStore, doc: StoredSubscription, subscription: Subscription, ctx: JobContext
) -> Subscription:
    """Recompute ``next_run_at`` and ``shard``; returns the subscription as it now stands."""
    fields: dict[str, Any] = {}
    shard = shard_for(doc.id, ctx.settings.shard_count)
    if subscription.shard != shard:
        fields["shard"] = shard
    if subscription.status == "active" and not subscription.paused:
        next_run = recomputed_next_run(subscription, subscription.next_run_at, ctx.now)
        if next_run is None:
            fields.update(status="expired", next_run_at=None)
            ctx.count("expired")
        elif next_run != subscription.next_run_at:
            fields["next_run_at"] = next_run
    elif not fields:
        ctx.count("skipped")
        return subscription
    if not fields:
        ctx.count("unchanged")
        return subscription
    if not ctx.dry_run:
        try:
            store.update(doc.id, {**fields, "updated_at": ctx.now}, if_updated_at=doc.update_time)
        except StoreConflict:
            ctx.count("conflicts")
            return subscription
    ctx.count("updated")
    return replace(subscription, status="expired") if "status" in fields else subscription


_DIGESTS = ("digests_created", "digests_updated", "digests_retired")


def _recompute_digests(
    schedules: ScheduleAdmin,
    subscription_id: str,
    subscription: Subscription | None,
    ctx: JobContext,
) -> None:
    """The subscription's digest schedules: created if missing, retired if no longer wanted,
    put back on their cron (see :func:`sync_delivery_schedules`)."""
    changes = sync_delivery_schedules(
        schedules, subscription_id, subscription, now=ctx.now, recompute=True
    )
    ctx.count("digests_created", len(changes.created))
    ctx.count("digests_updated", len(changes.updated))
    ctx.count("digests_retired", len(changes.retired))


class _ReadOnlySchedules:
    """A dry run's schedules: reads pass through, writes are only counted (by the caller)."""

    def __init__(self, inner: ScheduleAdmin) -> None:
        self._inner = inner

    def for_subscription(self, subscription_id: str) -> list[DigestSchedule]:
        return self._inner.for_subscription(subscription_id)

    def create(self, schedule: DigestSchedule) -> None:
        pass

    def update(self, schedule: DigestSchedule, fields: Mapping[str, Any]) -> None:
        pass


# --- reconcile --------------------------------------------------------------------------------


def _reconcile(arguments: Mapping[str, Any], ctx: JobContext) -> None:
    minutes = int(arguments.get("older_than_minutes", DEFAULT_RECONCILE_MINUTES))
    lost_after = arguments.get("lost_after_seconds")
    reconcile_stuck(
        ctx,
        timedelta(minutes=minutes),
        None if lost_after is None else timedelta(seconds=int(lost_after)),
    )


_HANDLERS: dict[str, Callable[[Mapping[str, Any], JobContext], None]] = {
    "expire": _expire,
    "prune-ledger": _prune,
    "reconcile": _reconcile,
    "recompute-next-run": _recompute,
}
