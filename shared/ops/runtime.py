"""Process-wide dependencies of the ops use cases, created on first use and replaceable in tests.

Nothing is created at import time. The CLI passes explicit objects instead (``--project``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from shared.errors import DependencyTimeoutError, DependencyUnavailableError

if TYPE_CHECKING:
    from shared.ledger.repository import Ledger
    from shared.ops.delivery_schedules import ScheduleAdmin
    from shared.ops.store import SubscriptionStore
    from shared.usecases.fanout import TaskGateway


class _Deps:
    def __init__(self) -> None:
        self.store: SubscriptionStore | None = None
        self.ledger: Ledger | None = None
        self.clock: Callable[[], datetime] | None = None
        self.tasks: TaskGateway | None = None
        self.digest_schedules: ScheduleAdmin | None = None


_deps = _Deps()


def set_store(store: SubscriptionStore | None) -> None:
    """Use ``store`` in the use cases (tests); ``None`` restores the Firestore default."""
    _deps.store = store


def set_ledger(ledger: Ledger | None) -> None:
    """Use ``ledger`` in the use cases (tests); ``None`` restores the default."""
    _deps.ledger = ledger


def set_tasks(tasks: TaskGateway | None) -> None:
    """Use ``tasks`` to create Cloud Tasks (tests); ``None`` restores the real gateway."""
    _deps.tasks = tasks


def set_clock(clock: Callable[[], datetime] | None) -> None:
    """Use ``clock`` for "now" (tests); ``None`` restores the wall clock."""
    _deps.clock = clock


def store() -> SubscriptionStore:
    """The subscription store (Firestore, project from the settings)."""
    if _deps.store is None:
        from shared.config import get_settings
        from shared.dal import make_store

        _deps.store = make_store(get_settings())
    return _deps.store


def digest_schedules() -> ScheduleAdmin:
    """The ``delivery_schedules`` collection (scheduled digests), on the shared Firestore client."""
    if _deps.digest_schedules is None:
        from shared.config import get_settings
        from shared.dal import make_digest_schedules

        _deps.digest_schedules = make_digest_schedules(get_settings())
    return _deps.digest_schedules


def tasks() -> TaskGateway:
    """Creates Cloud Tasks (the emulator's when configured), with fanout's timeouts."""
    if _deps.tasks is None:
        from shared.config import get_settings
        from shared.dal import make_task_gateway

        _deps.tasks = make_task_gateway(get_settings())
    return _deps.tasks


def ledger() -> Ledger:
    """The ledger on ``DATABASE_URL`` (one small pool per process)."""
    if _deps.ledger is None:
        _deps.ledger = _default_ledger()
    return _deps.ledger


@functools.cache
def _default_ledger() -> Ledger:
    from shared.config import ConfigError, get_settings
    from shared.ledger.repository import Ledger, open_pool

    settings = get_settings()
    if not settings.database_url:
        raise ConfigError("DATABASE_URL is not set: the ledger database is unknown")
    return Ledger(
        open_pool(
            settings.database_url,
            min_size=1,
            max_size=2,
            timeout=settings.dependency_timeout_seconds,
        )
    )


def now() -> datetime:
    """The current instant (UTC), or the test clock's."""
    return (_deps.clock or _utcnow)()


def _utcnow() -> datetime:
    return datetime.now(UTC)


@contextmanager
def dependency(name: str) -> Iterator[None]:
    """Turn a dependency's transient failures into retryable errors (Pub/Sub redelivers)."""
    import psycopg
    from google.api_core import exceptions as gexc

    try:
        yield
    except psycopg.OperationalError as exc:
        raise DependencyUnavailableError(name, str(exc).strip()[:300]) from exc
    except gexc.DeadlineExceeded as exc:
        raise DependencyTimeoutError(name, str(exc)[:300]) from exc
    except (gexc.ServiceUnavailable, gexc.InternalServerError, gexc.Aborted) as exc:
        raise DependencyUnavailableError(name, str(exc)[:300]) from exc
