"""In-memory stand-ins for the Protocols select, fanout and the ops use cases depend on.

They keep the semantics the real adapters promise (the due query's filters and order, writes
conditioned on the version read, the ledger's claim states, ALREADY_EXISTS for a known task
name), so the use-case logic can be tested without a network.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.dal.records import (
    Advance,
    AlreadyExists,
    OutboundMessage,
    StoreConflict,
    StoredSubscription,
    TaskRequest,
)
from shared.envelope import PushMessage
from shared.errors import DependencyUnavailableError, TaskRejectedError
from shared.ledger.repository import Claim, DispatchRow, RunClaims, RunRef, SourceSpec

BASE_VERSION = datetime(2020, 1, 1, tzinfo=UTC)


def message(
    message_id: str = "m-1", publish_time: datetime | None = None, data: bytes = b"{}"
) -> PushMessage:
    """A push message as the wrapper would hand it to a use case."""
    return PushMessage(data=data, attributes={}, message_id=message_id, publish_time=publish_time)


class FakeSubscriptionStore:
    """Documents with a version counter standing in for Firestore's update_time.

    The one in-memory store of the unit tests: select's due query and conditional advance,
    fanout's get, and the admin/maintenance/sync CRUD with the same preconditions as
    :class:`shared.dal.firestore_store.FirestoreSubscriptionStore`. Tests may edit ``docs``
    directly (that does not bump the version, like a write the code under test never saw).
    """

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self.reads = 0
        self.queries = 0
        self.lock = threading.Lock()
        # Called between the read of a page and the conditional write (simulates a race).
        self.on_read: Any = None
        # Every advance_many call's document ids; ``fail_advance`` ids make their call raise
        # after the others were written (BatchWrite is not atomic).
        self.advance_calls: list[list[str]] = []
        self.fail_advance: set[str] = set()

    def put(self, doc_id: str, data: Mapping[str, Any]) -> None:
        with self.lock:
            self.docs[doc_id] = dict(data)
            self.versions[doc_id] = self.versions.get(doc_id, 0) + 1

    def _stored(self, doc_id: str) -> StoredSubscription:
        version = self.versions[doc_id]
        data = dict(self.docs[doc_id])
        return StoredSubscription(
            doc_id, data, BASE_VERSION + timedelta(seconds=version), (data, doc_id)
        )

    def due_page(
        self,
        shard: int,
        tick_time: datetime,
        limit: int,
        after: StoredSubscription | None = None,
    ) -> list[StoredSubscription]:
        with self.lock:
            self.queries += 1
            due = [
                doc_id
                for doc_id, d in self.docs.items()
                if d.get("shard") == shard
                and d.get("status") == "active"
                and d.get("paused") is False
                and isinstance(d.get("next_run_at"), datetime)
                and d["next_run_at"] <= tick_time
            ]
            due.sort(key=lambda i: (self.docs[i]["next_run_at"], i))
            if after is not None:
                position = (after.data["next_run_at"], after.id)
                due = [i for i in due if (self.docs[i]["next_run_at"], i) > position]
            page = [self._stored(i) for i in due[:limit]]
            self.reads += len(page)
        if self.on_read is not None:
            self.on_read(page)
        return page

    def advance(
        self,
        doc: StoredSubscription,
        next_run_at: datetime | None,
        *,
        expired: bool,
        now: datetime,
    ) -> bool:
        with self.lock:
            if BASE_VERSION + timedelta(seconds=self.versions[doc.id]) != doc.update_time:
                return False
            data = self.docs[doc.id]
            data["next_run_at"] = None if expired else next_run_at
            if expired:
                data["status"] = "expired"
            data["updated_at"] = now
            self.versions[doc.id] += 1
            return True

    def advance_many(self, items: Sequence[Advance], *, now: datetime) -> list[bool]:
        with self.lock:
            self.advance_calls.append([item.doc.id for item in items])
        outcomes = [
            self.advance(item.doc, item.next_run_at, expired=item.expired, now=now)
            for item in items
            if item.doc.id not in self.fail_advance
        ]
        if any(item.doc.id in self.fail_advance for item in items):
            raise DependencyUnavailableError("firestore", "injected advance failure")
        return outcomes

    def get(self, subscription_id: str) -> StoredSubscription | None:
        with self.lock:
            self.reads += 1
            return self._stored(subscription_id) if subscription_id in self.docs else None

    # -- the ops side (shared.ops.store.SubscriptionStore) ----------------------------------------

    def _check(self, subscription_id: str, if_updated_at: datetime | None) -> dict[str, Any]:
        if subscription_id not in self.docs or (
            if_updated_at is not None and self._stored(subscription_id).update_time != if_updated_at
        ):
            raise StoreConflict(f"subscription {subscription_id!r} changed meanwhile")
        return self.docs[subscription_id]

    def create(self, subscription_id: str, data: Mapping[str, Any]) -> None:
        with self.lock:
            if subscription_id in self.docs:
                raise AlreadyExists(f"subscription {subscription_id!r} already exists")
        self.put(subscription_id, data)

    def replace(
        self, subscription_id: str, data: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        if if_updated_at is None:
            self.create(subscription_id, data)
            return
        with self.lock:
            self._check(subscription_id, if_updated_at)
        self.put(subscription_id, data)

    def update(
        self, subscription_id: str, fields: Mapping[str, Any], *, if_updated_at: datetime | None
    ) -> None:
        with self.lock:
            current = self._check(subscription_id, if_updated_at)
        self.put(subscription_id, {**current, **fields})

    def delete(self, subscription_id: str) -> bool:
        # The version survives the delete: an update_time read before it never matches again.
        with self.lock:
            return self.docs.pop(subscription_id, None) is not None

    def page(self, page_size: int, after: str | None = None) -> list[StoredSubscription]:
        with self.lock:
            self.queries += 1
            ids = sorted(i for i in self.docs if after is None or i > after)[:page_size]
            self.reads += len(ids)
            return [self._stored(i) for i in ids]

    def active_ending_by(self, instant: datetime, limit: int) -> list[StoredSubscription]:
        with self.lock:
            self.queries += 1
            found = [
                self._stored(i)
                for i, d in sorted(self.docs.items())
                if d.get("status") == "active"
                and isinstance(d.get("ends_at"), datetime)
                and d["ends_at"] <= instant
            ][:limit]
            self.reads += len(found)
            return found


class FakePublisher:
    """Records what was published; ``fail`` makes the next publish raise."""

    def __init__(self) -> None:
        self.batches: list[list[OutboundMessage]] = []
        self.fail = False
        self.lock = threading.Lock()

    @property
    def messages(self) -> list[OutboundMessage]:
        return [m for batch in self.batches for m in batch]

    def publish(self, messages: Sequence[OutboundMessage]) -> list[str]:
        if self.fail:
            raise DependencyUnavailableError("pubsub", "injected failure")
        with self.lock:
            self.batches.append(list(messages))
        return [str(i) for i in range(len(messages))]


class FakeTasks:
    """Cloud Tasks by name: a second create of a known name answers ALREADY_EXISTS."""

    def __init__(self) -> None:
        self.created: dict[str, TaskRequest] = {}
        self.calls: list[str] = []
        self.fail_names: set[str] = set()
        # Queues that do not exist: creates there are refused for good (NOT_FOUND).
        self.missing_queues: set[str] = set()
        self.lock = threading.Lock()

    def create(self, request: TaskRequest) -> str:
        with self.lock:
            self.calls.append(request.name)
            if request.name in self.fail_names:
                raise DependencyUnavailableError("cloudtasks", f"injected failure {request.name}")
            if request.queue in self.missing_queues:
                raise TaskRejectedError(request.name, "NOT_FOUND", f"queue {request.queue} gone")
            if request.name in self.created:
                return "already-exists"
            self.created[request.name] = request
            return "created"


@dataclass
class _Row:
    claim: Claim
    error: str | None = None


@dataclass
class FakeLedger:
    """The ledger's claim semantics in memory (see shared.ledger.repository)."""

    runs: dict[tuple[str, datetime], RunRef] = field(default_factory=dict)
    rows: dict[tuple[str, datetime, str], _Row] = field(default_factory=dict)
    ids: Any = field(default_factory=lambda: itertools.count(1))
    # start_run and mark_dispatches calls: fanout's round trips to the ledger.
    round_trips: int = 0

    def record_run(
        self, subscription_id: str, slot: datetime, reason: str, message_id: str | None = None
    ) -> RunRef:
        key = (subscription_id, slot)
        if key in self.runs:
            return replace(self.runs[key], recorded=False)
        run = RunRef(next(self.ids), subscription_id, slot, reason, recorded=True)
        self.runs[key] = run
        return run

    def claim_dispatches(self, run: RunRef, sources: Sequence[SourceSpec]) -> list[Claim]:
        claims = []
        for spec in sources:
            key = (run.subscription_id, run.slot, spec.source_id)
            if key in self.rows:
                claims.append(replace(self.rows[key].claim, claimed=False))
                continue
            claim = Claim(
                dispatch_id=next(self.ids),
                run_id=run.id,
                subscription_id=run.subscription_id,
                slot=run.slot,
                source_id=spec.source_id,
                source_kind=spec.source_kind,
                task_name=spec.task_name,
                queue=spec.queue,
                state="claimed",
                attempts=0,
                claimed=True,
            )
            self.rows[key] = _Row(claim)
            claims.append(claim)
        return claims

    def start_run(
        self,
        subscription_id: str,
        slot: datetime,
        reason: str,
        sources: Sequence[SourceSpec],
        message_id: str | None = None,
    ) -> RunClaims:
        run = self.record_run(subscription_id, slot, reason, message_id)
        self.round_trips += 1
        return RunClaims(run, self.claim_dispatches(run, sources))

    def mark_dispatches(
        self, created: Sequence[int], failed: Sequence[tuple[int, str]] = ()
    ) -> tuple[int, int]:
        self.round_trips += 1
        return (
            self.mark_created_many(created),
            sum(1 for dispatch_id, error in failed if self.mark_failed(dispatch_id, error)),
        )

    def _by_id(self, dispatch_id: int) -> _Row:
        return next(r for r in self.rows.values() if r.claim.dispatch_id == dispatch_id)

    def mark_created_many(self, dispatch_ids: Sequence[int]) -> int:
        changed = 0
        for dispatch_id in dispatch_ids:
            row = self._by_id(dispatch_id)
            if row.claim.state != "created":
                row.claim = replace(row.claim, state="created")
                changed += 1
        return changed

    def mark_created(self, dispatch_id: int) -> bool:
        return self.mark_created_many([dispatch_id]) == 1

    def run_reasons(self, run_ids: Sequence[int]) -> dict[int, str]:
        return {r.id: r.reason for r in self.runs.values() if r.id in run_ids}

    def stuck_dispatches(self, older_than: timedelta, limit: int = 1000) -> list[DispatchRow]:
        """Every claimed or failed row, by id (the fake has no clock: ``older_than`` is moot)."""
        stuck = sorted(
            (r for r in self.rows.values() if r.claim.state in ("claimed", "failed")),
            key=lambda r: r.claim.dispatch_id,
        )
        return [
            DispatchRow(
                id=r.claim.dispatch_id,
                run_id=r.claim.run_id,
                subscription_id=r.claim.subscription_id,
                slot=r.claim.slot,
                source_id=r.claim.source_id,
                source_kind=r.claim.source_kind,
                task_name=r.claim.task_name,
                queue=r.claim.queue,
                state=r.claim.state,
                attempts=r.claim.attempts,
                last_error=r.error,
                claimed_at=r.claim.slot,
                created_at=None,
                updated_at=r.claim.slot,
            )
            for r in stuck[:limit]
        ]

    def mark_failed(self, dispatch_id: int, error: str) -> bool:
        row = self._by_id(dispatch_id)
        if row.claim.state == "created":
            return False
        row.claim = replace(row.claim, state="failed", attempts=row.claim.attempts + 1)
        row.error = error
        return True

    def states(self) -> dict[str, str]:
        return {k[2]: r.claim.state for k, r in self.rows.items()}
