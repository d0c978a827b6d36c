"""Create or update the Cloud Tasks queues that app.toml declares (one per source kind, or
``shards`` of them: each shard gets the kind's rate limits split evenly, as in terraform/tasks.tf).

The local stack calls this against the Cloud Tasks emulator; in production Terraform owns the
queues and this only serves to check or repair drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from google.api_core import exceptions as gexc
from google.protobuf import duration_pb2, field_mask_pb2

from shared.clients import build_tasks_client
from shared.config import QueueConfig, Settings

if TYPE_CHECKING:
    from google.cloud import tasks_v2

_MASK = [
    "rate_limits.max_dispatches_per_second",
    "rate_limits.max_concurrent_dispatches",
    "retry_config.max_attempts",
    "retry_config.min_backoff",
    "retry_config.max_backoff",
    "retry_config.max_doublings",
]


@dataclass(frozen=True)
class QueueChange:
    action: str  # "create" or "update"
    name: str


def queue_resource(settings: Settings, queue: QueueConfig, shard: int = 0) -> dict[str, object]:
    """One shard queue of a kind as a Cloud Tasks ``Queue`` (the kind's limits split evenly)."""
    return {
        "name": settings.queue_path(queue.kind, shard),
        "rate_limits": {
            "max_dispatches_per_second": queue.shard_rate(),
            "max_concurrent_dispatches": queue.shard_concurrency(),
        },
        "retry_config": {
            "max_attempts": queue.max_attempts,
            "min_backoff": duration_pb2.Duration(
                seconds=int(queue.min_backoff_seconds),
                nanos=int((queue.min_backoff_seconds % 1) * 1e9),
            ),
            "max_backoff": duration_pb2.Duration(seconds=int(queue.max_backoff_seconds)),
            "max_doublings": queue.max_doublings,
        },
    }


def apply_queues(
    settings: Settings, client: tasks_v2.CloudTasksClient | None = None
) -> list[QueueChange]:
    """Create every configured queue (every shard), or update its limits when it exists."""
    client = client or build_tasks_client(settings.cloud_tasks_emulator_host)
    parent = f"projects/{settings.project}/locations/{settings.tasks_location}"
    changes: list[QueueChange] = []
    shards = [(q, i) for q in settings.queues.values() for i in range(q.shards)]
    for queue, shard in shards:
        resource = queue_resource(settings, queue, shard)
        try:
            client.create_queue(request={"parent": parent, "queue": resource})
            changes.append(QueueChange("create", str(resource["name"])))
        except gexc.AlreadyExists:
            client.update_queue(
                request={"queue": resource, "update_mask": field_mask_pb2.FieldMask(paths=_MASK)}
            )
            changes.append(QueueChange("update", str(resource["name"])))
    return changes
