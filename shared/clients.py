"""Google Cloud clients, created lazily on first use and cached for the life of the process.

Nothing here runs at import time: a cold start pays for a client only when a request needs it,
and tests can point the environment at emulators before the first call. The Pub/Sub and
Firestore libraries pick up ``PUBSUB_EMULATOR_HOST`` / ``FIRESTORE_EMULATOR_HOST`` themselves;
Cloud Tasks has no official emulator, so ``CLOUD_TASKS_EMULATOR_HOST`` is wired here.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from shared.config import get_settings

if TYPE_CHECKING:
    import google.cloud.pubsub_v1 as pubsub_v1
    import grpc
    from google.cloud import firestore, tasks_v2


@functools.cache
def publisher() -> pubsub_v1.PublisherClient:
    import google.cloud.pubsub_v1 as pubsub_v1

    # Small batches flushed quickly: select publishes hundreds of due messages per tick and
    # waits on every future, so latency matters more than packing.
    batch = pubsub_v1.types.BatchSettings(max_messages=500, max_bytes=1_000_000, max_latency=0.01)
    return pubsub_v1.PublisherClient(batch_settings=batch)


@functools.cache
def subscriber() -> pubsub_v1.SubscriberClient:
    import google.cloud.pubsub_v1 as pubsub_v1

    return pubsub_v1.SubscriberClient()


@functools.cache
def firestore_client() -> firestore.Client:
    from google.cloud import firestore

    return firestore.Client(project=get_settings().project)


@functools.cache
def tasks_client() -> tasks_v2.CloudTasksClient:
    return build_tasks_client(get_settings().cloud_tasks_emulator_host)


def build_tasks_client(host: str | None) -> tasks_v2.CloudTasksClient:
    """A Cloud Tasks client for production (``host`` None) or the emulator at ``host``."""
    from google.cloud import tasks_v2

    if host is None:
        return tasks_v2.CloudTasksClient()
    import grpc
    from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

    channel = grpc.insecure_channel(host)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def grpc_channel_of(client: object) -> grpc.Channel | None:
    """The gRPC channel under a generated client, or ``None`` (a test double, a REST transport).

    The hot paths (fanout's creates, select's publishes) call one method on it through a plain
    protobuf stub: the same RPC with the client's credentials, without the wrapper layers.
    """
    import grpc

    channel = getattr(getattr(client, "transport", None), "grpc_channel", None)
    return channel if isinstance(channel, grpc.Channel) else None
