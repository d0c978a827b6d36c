"""Planning email deliveries: one Cloud Task per (delivery key, recipient), claimed first.

Two callers share :func:`plan_delivery`:

* :func:`plan_after_run`, on each ``run-completed`` event: every ``after: run`` delivery of the
  subscription, for the run's slot, with the run id;
* the scheduled digests, on select's tick (:mod:`shared.usecases.select_digests`): a digest's
  cron slot and the start of its period, planned **without a ledger claim** (``store=None``):
  select runs on up to one instance per dispatcher shard and holds no PostgreSQL connection.

Exactly one task per key, whatever is duplicated upstream: the row is claimed in the ledger
(``INSERT .. ON CONFLICT DO NOTHING``) before the task is created, and the task is named from
the key's hash, so a second planner for the same key either finds the row ``created`` (nothing
to do) or re-creates under the same name and gets ALREADY_EXISTS. A duplicated ``run-completed``
event (the results function publishes at least once) therefore plans nothing new.

Failures: a Cloud Tasks refusal no retry can change (TaskRejectedError, permanent) is recorded on
the row and raised, so the push handler dead-letters the event with the reason; anything else is
recorded and raised as retryable, so Pub/Sub redelivers and the next attempt re-creates under
the stored name.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shared.dal.cloud_tasks import CreateOutcome
from shared.dal.records import StoredSubscription, TaskRequest
from shared.delivery_key import DeliveryKey, email_task_id, message_id
from shared.email_settings import EmailSettings
from shared.envelope import PushMessage, parse_rfc3339
from shared.errors import DispatcherError, InvalidRequestError
from shared.ledger.deliveries import EmailClaim, EmailSpec
from shared.subscription import Delivery, InvalidSubscription, Subscription

logger = logging.getLogger(__name__)


class EmailClaims(Protocol):
    def claim(self, spec: EmailSpec) -> EmailClaim: ...
    def task_created(self, key: DeliveryKey) -> None: ...
    def task_failed(self, key: DeliveryKey, error: str) -> None: ...


class TaskCreator(Protocol):
    def create(self, request: TaskRequest) -> CreateOutcome: ...


class SubscriptionReader(Protocol):
    def get(self, subscription_id: str) -> StoredSubscription | None: ...


@dataclass(frozen=True)
class PlanDependencies:
    # None: plan without a ledger claim (select's scheduled digests, see plan_delivery).
    store: EmailClaims | None
    tasks: TaskCreator
    subscriptions: SubscriptionReader
    settings: EmailSettings
    project: str
    location: str
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)


@dataclass
class PlanResult:
    """What one planning call did, per recipient."""

    created: list[DeliveryKey] = field(default_factory=list)
    # Claimed earlier and already created (a duplicate event): nothing done.
    existing: list[DeliveryKey] = field(default_factory=list)
    skipped: str | None = None


def plan_delivery(
    subscription: Subscription,
    delivery: Delivery,
    slot: datetime,
    deps: PlanDependencies,
    *,
    run_id: int | None = None,
    period_start: datetime | None = None,
    result: PlanResult | None = None,
) -> PlanResult:
    """Claim and create one email task per recipient of ``delivery`` for ``slot``."""
    result = result or PlanResult()
    settings = deps.settings
    queue_path = settings.queue_path(deps.project, deps.location)
    for recipient in delivery.to:
        key = DeliveryKey(subscription.id, delivery.id, slot, recipient)
        spec = EmailSpec(
            key=key,
            format=delivery.format,
            task_name=f"{queue_path}/tasks/{email_task_id(key)}",
            queue=settings.queue,
            message_id=message_id(key, settings.message_id_domain),
            run_id=run_id,
        )
        if deps.store is None:
            # No claim: select plans scheduled digests and holds no ledger connection (its
            # instances do not fit the database's connection budget). The task's name is the
            # key's hash all the same, so overlapping ticks meet ALREADY_EXISTS; the deliver
            # function inserts the row on its first attempt (begin_send), and its conditional
            # write still allows one send per key, however many tasks arrive.
            task_name = spec.task_name
        else:
            claim = deps.store.claim(spec)
            if not claim.must_create:
                result.existing.append(key)
                continue
            # The stored name: a retry re-creates exactly what the first attempt may have made.
            task_name = claim.row.task_name
        body: dict[str, Any] = {"delivery_key": key.to_json(), "format": delivery.format}
        if run_id is not None:
            body["run_id"] = run_id
        if period_start is not None:
            body["period_start"] = period_start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        request = TaskRequest(
            name=task_name,
            queue=queue_path,
            url=settings.deliver_url,
            body=json.dumps(body, sort_keys=True).encode(),
            schedule_time=deps.clock(),
            service_account=settings.service_account,
            audience=settings.deliver_url,
        )
        try:
            outcome = deps.tasks.create(request)
        except DispatcherError as exc:
            if deps.store is not None:
                deps.store.task_failed(key, str(exc))
            raise
        if deps.store is not None:
            deps.store.task_created(key)
        elif outcome is CreateOutcome.ALREADY_EXISTS:
            result.existing.append(key)
            continue
        result.created.append(key)
    return result


def plan_after_run(payload: Mapping[str, Any], deps: PlanDependencies) -> PlanResult:
    """A validated ``run-completed`` event in: the run's ``after: run`` deliveries planned."""
    stored = deps.subscriptions.get(payload["subscription_id"])
    if stored is None:
        return PlanResult(skipped="subscription deleted")
    try:
        subscription = Subscription.from_document(stored.id, stored.data)
    except InvalidSubscription as exc:
        # No redelivery repairs a document: dead-letter the event with the reason.
        raise InvalidRequestError(f"subscription {stored.id} is malformed: {exc}") from exc
    after_run = [d for d in subscription.deliveries if d.after_run]
    if not after_run:
        return PlanResult(skipped="no after-run deliveries")
    slot = parse_rfc3339(payload["slot"])
    result = PlanResult()
    for delivery in after_run:
        plan_delivery(subscription, delivery, slot, deps, run_id=payload["run_id"], result=result)
    logger.info(
        "run %s: %d email tasks created, %d already planned",
        payload["run_id"],
        len(result.created),
        len(result.existing),
    )
    return result


@functools.cache
def _dependencies() -> PlanDependencies:
    """The real ones, built on the first message (never at import)."""
    from shared import clients, config
    from shared.dal.cloud_tasks import CloudTasksGateway
    from shared.dal.firestore_store import FirestoreSubscriptionStore
    from shared.email_settings import load_email_settings
    from shared.ledger.deliveries import EmailLedger
    from shared.ledger.repository import open_pool

    settings = config.get_settings()
    if not settings.database_url:
        raise config.ConfigError("DATABASE_URL is not set: plan-deliveries claims in the ledger")

    def firestore_client() -> Any:
        from google.cloud import firestore

        return firestore.Client(project=settings.project)

    return PlanDependencies(
        store=EmailLedger(
            open_pool(settings.database_url, timeout=settings.dependency_timeout_seconds)
        ),
        tasks=CloudTasksGateway(clients.tasks_client, timeout=settings.dependency_timeout_seconds),
        subscriptions=FirestoreSubscriptionStore(
            firestore_client,
            timeout=settings.dependency_timeout_seconds,
            retry_budget=settings.dependency_retry_budget_seconds,
        ),
        settings=load_email_settings(),
        project=settings.project,
        location=settings.tasks_location,
    )


def plan_deliveries(
    payload: dict[str, Any], message: PushMessage, *, deps: PlanDependencies | None = None
) -> PlanResult:
    """The push use case of ``dispatcher-run-completed`` (functions/plan-deliveries)."""
    return plan_after_run(payload, deps or _dependencies())
