"""Maintenance ``reconcile``: re-create Cloud Tasks for dispatches stuck in claimed or failed."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from shared.errors import InvalidRequestError

if TYPE_CHECKING:
    from shared.usecases.maintenance import JobContext


def reconcile_stuck(ctx: JobContext, older_than: timedelta) -> None:
    """Re-create the task of every stuck dispatch under its stored name."""
    raise InvalidRequestError("reconcile is not available yet")
