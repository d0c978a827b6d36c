"""Data access: Firestore, Pub/Sub, Cloud Tasks and the PostgreSQL ledger behind small classes.

The use cases depend on Protocols (see :mod:`shared.usecases.select_due`,
:mod:`shared.usecases.fanout` and :mod:`shared.ops.store`); one Firestore class
(:mod:`shared.dal.firestore_store`) implements all three. The real dependencies of select and
fanout come from :func:`select_dependencies` and :func:`fanout_dependencies`, built lazily on the
first request of a process and cached; the ops ones from :mod:`shared.ops.runtime`.
Nothing here creates a client or reads the environment at import time.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING

from shared.dal.records import OutboundMessage, StoredSubscription, TaskRequest

if TYPE_CHECKING:
    from shared.ledger.repository import Ledger
    from shared.usecases.fanout import FanoutDependencies
    from shared.usecases.select_due import SelectDependencies

__all__ = [
    "DUE_TOPIC",
    "OutboundMessage",
    "StoredSubscription",
    "TaskRequest",
    "fanout_dependencies",
    "ledger",
    "select_dependencies",
]

DUE_TOPIC = "dispatcher-due"


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

                url = get_settings().database_url
                if not url:
                    raise ConfigError("DATABASE_URL is not set: fanout needs the ledger")
                # Enough connections for fanout's concurrent instances' threads (8 per instance
                # locally, like Cloud Run's concurrency) without exhausting PostgreSQL.
                _LedgerHolder.ledger = Ledger(open_pool(url, min_size=1, max_size=8))
    return _LedgerHolder.ledger


@functools.cache
def select_dependencies() -> SelectDependencies:
    """The real dependencies of select (clients are still created only on first use)."""
    from shared import clients
    from shared.config import get_settings
    from shared.dal.firestore_store import FirestoreSubscriptionStore
    from shared.dal.pubsub_publisher import PubSubPublisher
    from shared.usecases.select_due import SelectDependencies

    settings = get_settings()
    return SelectDependencies(
        settings=settings,
        store=FirestoreSubscriptionStore(clients.firestore_client),
        publisher=PubSubPublisher(
            clients.publisher,
            settings.topic_path(DUE_TOPIC),
            timeout=settings.publish_timeout_seconds,
        ),
    )


@functools.cache
def fanout_dependencies() -> FanoutDependencies:
    """The real dependencies of fanout (clients are still created only on first use)."""
    from shared import clients
    from shared.config import get_settings
    from shared.dal.cloud_tasks import CloudTasksGateway
    from shared.dal.firestore_store import FirestoreSubscriptionStore
    from shared.dal.ledger_gateway import LedgerGateway
    from shared.usecases.fanout import FanoutDependencies

    return FanoutDependencies(
        settings=get_settings(),
        store=FirestoreSubscriptionStore(clients.firestore_client),
        tasks=CloudTasksGateway(clients.tasks_client),
        ledger=LedgerGateway(ledger),
    )
