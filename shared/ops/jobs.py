"""What a maintenance job is handed (:class:`JobContext`).

Its own module so that the jobs' use case (:mod:`shared.usecases.maintenance`) and the jobs that
live under :mod:`shared.ops` (``reconcile``) both import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from shared.ops import runtime

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ledger.repository import Ledger
    from shared.ops.delivery_schedules import ScheduleAdmin
    from shared.ops.store import SubscriptionStore
    from shared.usecases.fanout import TaskGateway

__all__ = ["JobContext"]


@dataclass
class JobContext:
    """What a job needs; the real ones come from :mod:`shared.ops.runtime`."""

    settings: Settings
    now: datetime
    store_factory: Callable[[], SubscriptionStore]
    ledger_factory: Callable[[], Ledger]
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # Only reconcile creates tasks; the gateway is built on first use.
    tasks_factory: Callable[[], TaskGateway] = runtime.tasks
    # Only recompute-next-run touches the digest schedules.
    schedules_factory: Callable[[], ScheduleAdmin] = runtime.digest_schedules

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to counter ``key``."""
        self.counts[key] = self.counts.get(key, 0) + n
