"""Data access: Firestore, Pub/Sub, Cloud Tasks and the PostgreSQL ledger behind small classes.

The use cases depend on Protocols (see :mod:`shared.usecases.select_due`,
:mod:`shared.usecases.fanout` and :mod:`shared.ops.store`); one Firestore class
(:mod:`shared.dal.firestore_store`) implements all three. Nothing here imports a use case: the
use cases import this layer's plain values (:mod:`shared.dal.records`), and
:mod:`shared.wiring` puts the two together for the functions. Nothing here creates a client or
reads the environment at import time.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from shared.dal.records import OutboundMessage, StoredSubscription, TaskRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from google.cloud import firestore, tasks_v2

    from shared.config import Settings
    from shared.dal.cloud_tasks import CloudTasksGateway
    from shared.dal.digest_schedules import FirestoreDigestSchedules
    from shared.dal.firestore_store import FirestoreSubscriptionStore
    from shared.dal.pubsub_publisher import PubSubPublisher
    from shared.ledger.repository import Ledger

__all__ = [
    "DUE_TOPIC",
    "RUN_COMPLETED_TOPIC",
    "OutboundMessage",
    "StoredSubscription",
    "TaskRequest",
    "completion_publisher",
    "ledger",
    "make_store",
    "make_task_gateway",
]

DUE_TOPIC = "dispatcher-due"
RUN_COMPLETED_TOPIC = "dispatcher-run-completed"


def make_store(
    settings: Settings, client_factory: Callable[[], firestore.Client] | None = None
) -> FirestoreSubscriptionStore:
    """The subscriptions store with the configured dependency timeout and retry budget."""
    from shared import clients
    from shared.dal.firestore_store import FirestoreSubscriptionStore

    return FirestoreSubscriptionStore(
        client_factory or clients.firestore_client,
        timeout=settings.dependency_timeout_seconds,
        retry_budget=settings.dependency_retry_budget_seconds,
    )


def make_digest_schedules(
    settings: Settings, client_factory: Callable[[], firestore.Client] | None = None
) -> FirestoreDigestSchedules:
    """The ``delivery_schedules`` collection with the configured timeout and retry budget."""
    from shared import clients
    from shared.dal.digest_schedules import FirestoreDigestSchedules

    return FirestoreDigestSchedules(
        client_factory or clients.firestore_client,
        timeout=settings.dependency_timeout_seconds,
        retry_budget=settings.dependency_retry_budget_seconds,
    )


def make_task_gateway(
    settings: Settings, client_factory: Callable[[], tasks_v2.CloudTasksClient] | None = None
) -> CloudTasksGateway:
    """Cloud Tasks creation with the configured dependency timeout and retry budget."""
    from shared import clients
    from shared.dal.cloud_tasks import CloudTasksGateway

    return CloudTasksGateway(
        client_factory or clients.tasks_client,
        timeout=settings.dependency_timeout_seconds,
        retry_budget=settings.dependency_retry_budget_seconds,
    )


class _LedgerHolder:
    lock = threading.Lock()
    ledger: Ledger | None = None


def ledger() -> Ledger:
    """The process-wide ledger on a lazily opened pool (``DATABASE_URL`` from the settings)."""
    if _LedgerHolder.ledger is None:
        with _LedgerHolder.lock:
            if _LedgerHolder.ledger is None:
                from shared.config import ConfigError, get_settings
                from shared.ledger.repository import Ledger, open_pool

                settings = get_settings()
                url = settings.database_url
                if not url:
                    raise ConfigError("DATABASE_URL is not set: fanout needs the ledger")
                # One connection per concurrent request of this instance ([ledger]
                # pool_max_size = the function's concurrency); max instances x pool size stays
                # inside the database's connection budget (docs/capacity.md, a deploy test).
                _LedgerHolder.ledger = Ledger(
                    open_pool(
                        url,
                        min_size=1,
                        max_size=settings.ledger_pool_max_size,
                        timeout=settings.dependency_timeout_seconds,
                    )
                )
    return _LedgerHolder.ledger


def completion_publisher(settings: Settings) -> PubSubPublisher:
    """Publishes run-completed events (the results function and maintenance reconcile)."""
    from shared import clients
    from shared.dal.pubsub_publisher import PubSubPublisher

    return PubSubPublisher(
        clients.publisher,
        settings.topic_path(RUN_COMPLETED_TOPIC),
        timeout=settings.publish_timeout_seconds,
    )
