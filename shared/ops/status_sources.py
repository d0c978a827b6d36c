"""The real readers behind ``dispatcher status`` (:mod:`shared.ops.status`): ledger, Cloud Tasks,
Cloud Monitoring. Clients are passed in or built on first call, never at import time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.instants import format_instant, format_slot
from shared.ops.status import EXAMPLES, Backlog, DispatchHealth

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.ledger.repository import Ledger

MONITORING_URL = "https://monitoring.googleapis.com/v3/projects/{project}/timeSeries"
EMULATOR_BACKLOG = (
    "the Pub/Sub emulator has no backlog metric, and pulling to count would lease real messages"
)


def dispatch_health(ledger: Ledger, stuck_after: timedelta) -> DispatchHealth:
    """Failed rows, rows claimed for longer than ``stuck_after``, a few examples, the last run.

    Two small queries; the state filters match the partial index that reconcile uses.
    """
    pool = ledger.pool
    if pool.closed:
        pool.open()
    with pool.connection() as conn:
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'failed'), "
            "count(*) FILTER (WHERE state = 'claimed' AND updated_at < now() - %s), "
            "(SELECT max(created_at) FROM runs) "
            "FROM dispatches WHERE state IN ('claimed', 'failed')",
            (stuck_after,),
        ).fetchone()
        rows = conn.execute(
            "SELECT subscription_id, slot, source_id, state, attempts, last_error, updated_at "
            "FROM dispatches WHERE state = 'failed' "
            "OR (state = 'claimed' AND updated_at < now() - %s) "
            "ORDER BY updated_at DESC LIMIT %s",
            (stuck_after, EXAMPLES),
        ).fetchall()
    failed, stuck, last_run = counts if counts is not None else (0, 0, None)
    return DispatchHealth(
        failed=int(failed or 0),
        stuck=int(stuck or 0),
        examples=[
            {
                "subscription_id": r[0],
                "slot": format_slot(r[1]),
                "source_id": r[2],
                "state": r[3],
                "attempts": r[4],
                "last_error": r[5],
                "updated_at": format_instant(r[6]),
            }
            for r in rows
        ],
        last_run_at=last_run,
    )


def queue_states(settings: Settings, client: Any) -> dict[str, str | None]:
    """Full queue name → state name (``RUNNING``, ``PAUSED``, ``DISABLED``) of every queue in
    the Cloud Tasks location; a configured queue that is absent does not exist."""
    parent = f"projects/{settings.project}/locations/{settings.tasks_location}"
    states: dict[str, str | None] = {}
    for queue in client.list_queues(request={"parent": parent}):
        states[str(queue.name)] = queue.state.name if queue.state else "STATE_UNSPECIFIED"
    return states


def emulator_backlog(subscription: str) -> Backlog:
    """On the Pub/Sub emulator the backlog is not measurable without disturbing it."""
    return Backlog(subscription, None, why=EMULATOR_BACKLOG)


def monitoring_backlog(
    project: str,
    session_factory: Callable[[], Any],
    *,
    now: datetime | None = None,
) -> Callable[[str], Backlog]:
    """A backlog reader on Cloud Monitoring's ``pubsub.googleapis.com/subscription`` metrics.

    ``session_factory`` returns an authorized ``requests`` session (google-auth's
    ``AuthorizedSession``); the metrics are sampled every minute, so the last 10 minutes are read
    and the newest point is used.
    """
    session: list[Any] = []

    def latest(metric: str, subscription: str) -> float | None:
        if not session:
            session.append(session_factory())
        end = now or datetime.now(UTC)
        response = session[0].get(
            MONITORING_URL.format(project=project),
            params={
                "filter": (
                    f'metric.type = "pubsub.googleapis.com/subscription/{metric}" AND '
                    f'resource.labels.subscription_id = "{subscription}"'
                ),
                "interval.startTime": format_instant(end - timedelta(minutes=10)),
                "interval.endTime": format_instant(end),
            },
            timeout=30,
        )
        response.raise_for_status()
        return latest_point(response.json())

    def read(subscription: str) -> Backlog:
        try:
            messages = latest("num_undelivered_messages", subscription)
            age = latest("oldest_unacked_message_age", subscription)
        except Exception as exc:  # permissions, API not enabled: say so, do not fail status
            return Backlog(subscription, None, why=f"Cloud Monitoring: {exc}"[:300])
        if messages is None:
            return Backlog(subscription, None, why="Cloud Monitoring has no recent sample")
        return Backlog(subscription, int(messages), age)

    return read


def latest_point(body: Mapping[str, Any]) -> float | None:
    """The newest point's value of the first time series in a ``timeSeries.list`` answer."""
    series = body.get("timeSeries") or []
    if not series:
        return None
    points = series[0].get("points") or []
    if not points:
        return None
    # Points come newest first; the interval's endTime orders them if not.
    newest = max(points, key=lambda p: str(p.get("interval", {}).get("endTime", "")))
    value = newest.get("value", {})
    for key in ("int64Value", "doubleValue"):
        if key in value:
            return float(value[key])
    return None


def authorized_session() -> Any:
    """Application default credentials with read access to Cloud Monitoring."""
    import google.auth
    from google.auth.transport.requests import AuthorizedSession

    credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/monitoring.read"])
    return AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
