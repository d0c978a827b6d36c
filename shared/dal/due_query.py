"""The due query on ``subscriptions``, alone in its module so the deploy tests can read it.

It is exactly the composite index Terraform declares for the collection::

    shard ==, status ==, paused ==, next_run_at <=   order by next_run_at

so it reads only due documents, never the collection. ``tests/unit/deploy/test_terraform.py``
checks this file's filters against the index.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["due_query"]


def due_query(collection: Any, shard: int, tick_time: datetime, limit: int) -> Any:
    """The query for one page of the shard's due documents, oldest ``next_run_at`` first."""
    from google.cloud.firestore_v1.base_query import FieldFilter

    return (
        collection.where(filter=FieldFilter("shard", "==", shard))
        .where(filter=FieldFilter("status", "==", "active"))
        .where(filter=FieldFilter("paused", "==", False))
        .where(filter=FieldFilter("next_run_at", "<=", tick_time))
        .order_by("next_run_at")
        .limit(limit)
    )
