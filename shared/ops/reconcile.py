"""Maintenance ``reconcile``: dispatches stuck in claimed or failed.

Not finished: re-creating the task needs fanout's task builder (``shared.usecases.fanout``'s
``_task_request`` is private today). Until it is exposed, reconcile only counts and logs what is
stuck (``stuck``), and re-creates nothing (``recreated`` stays 0), so the scheduled job does not
dead-letter every ten minutes.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from shared.ops import runtime

if TYPE_CHECKING:
    from shared.usecases.maintenance import JobContext

logger = logging.getLogger(__name__)


def reconcile_stuck(ctx: JobContext, older_than: timedelta) -> None:
    """Count the dispatches stuck for longer than ``older_than`` (re-creation: see module doc)."""
    with runtime.dependency("postgresql"):
        stuck = ctx.ledger_factory().stuck_dispatches(older_than, limit=10_000)
    ctx.counts.update({"stuck": len(stuck), "recreated": 0, "already_existed": 0})
    for row in stuck[:20]:
        logger.warning(
            "dispatch stuck in %s: %s @ %s source %s (task %s)",
            row.state,
            row.subscription_id,
            row.slot.isoformat(),
            row.source_id,
            row.task_name,
            extra={"subscription_id": row.subscription_id, "dispatch_id": row.id},
        )
