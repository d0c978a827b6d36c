"""Create or update what topics.yaml declares: topics, push subscriptions, dead-letter wiring.

Used by ``dispatcher topics apply`` and by the local stack. Idempotent: a second run reports
every resource as unchanged. Works on the emulator and on a real project alike; in production
Terraform owns these resources and this is the tool for checking or repairing drift.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import google.cloud.pubsub_v1 as pubsub_v1
from google.api_core import exceptions as gexc
from google.protobuf import duration_pb2, field_mask_pb2

from shared.topology import EventSpec, RetryPolicy, TopicSpec, Topology

DLQ_ACK_DEADLINE_SECONDS = 60


@dataclass(frozen=True)
class Change:
    action: str  # "create", "update" or "unchanged"
    kind: str  # "topic" or "subscription"
    name: str
    detail: str = ""


@dataclass(frozen=True)
class PushAuth:
    """OIDC identity Pub/Sub uses when it pushes to a function (production)."""

    service_account_email: str
    audience: str = ""


def apply_topology(
    topology: Topology,
    project: str,
    endpoints: Mapping[str, str],
    *,
    publisher: pubsub_v1.PublisherClient,
    subscriber: pubsub_v1.SubscriberClient,
    retry_override: RetryPolicy | None = None,
    push_auth: PushAuth | None = None,
    dry_run: bool = False,
) -> list[Change]:
    """Bring Pub/Sub in line with ``topology``; ``endpoints`` maps function name to push URL.

    A topic whose function has no endpoint gets its topics and dead-letter subscription but no
    push subscription (say, applying to a project before the functions are deployed).
    """
    changes: list[Change] = []
    for spec in topology.topics:
        changes += _ensure_topic(publisher, f"projects/{project}/topics/{spec.name}", dry_run)
        dlq_path = f"projects/{project}/topics/{spec.dead_letter.topic}"
        changes += _ensure_topic(publisher, dlq_path, dry_run)
        changes += _ensure_subscription(
            subscriber,
            _dlq_subscription(project, spec, topology.dead_letter_retention_days),
            dry_run,
        )
        endpoint = endpoints.get(spec.push.function)
        if endpoint is not None:
            wanted = _push_subscription(project, spec, endpoint, retry_override, push_auth)
            changes += _ensure_subscription(subscriber, wanted, dry_run)
    for event in topology.events:
        changes += _ensure_topic(publisher, f"projects/{project}/topics/{event.name}", dry_run)
        changes += _ensure_subscription(subscriber, _event_tap(project, event), dry_run)
    return changes


def _ensure_topic(
    publisher: pubsub_v1.PublisherClient, path: str, dry_run: bool
) -> Iterator[Change]:
    try:
        publisher.get_topic(request={"topic": path})
    except gexc.NotFound:
        if not dry_run:
            # AlreadyExists: someone else applied concurrently, the outcome is what we wanted.
            with contextlib.suppress(gexc.AlreadyExists):
                publisher.create_topic(request={"name": path})
        yield Change("create", "topic", path)
        return
    yield Change("unchanged", "topic", path)


_COMPARED_FIELDS = (
    "ack_deadline_seconds",
    "push_config",
    "retry_policy",
    "dead_letter_policy",
    "message_retention_duration",
    "topic",
)


def _ensure_subscription(
    subscriber: pubsub_v1.SubscriberClient, wanted: dict[str, Any], dry_run: bool
) -> Iterator[Change]:
    path = wanted["name"]
    try:
        current = subscriber.get_subscription(request={"subscription": path})
    except gexc.NotFound:
        if not dry_run:
            with contextlib.suppress(gexc.AlreadyExists):
                subscriber.create_subscription(request=wanted)
        yield Change("create", "subscription", path, f"topic {wanted['topic']}")
        return
    wanted_pb = pubsub_v1.types.Subscription(**wanted)
    differing = [
        name
        for name in _COMPARED_FIELDS
        if name in wanted and getattr(current, name) != getattr(wanted_pb, name)
    ]
    if "topic" in differing:
        # A subscription cannot move to another topic; apply must not silently leave it wrong.
        raise RuntimeError(
            f"subscription {path} is attached to {current.topic}, topics.yaml says "
            f"{wanted['topic']}: delete it and apply again"
        )
    if not differing:
        yield Change("unchanged", "subscription", path)
        return
    if not dry_run:
        subscriber.update_subscription(
            request={
                "subscription": wanted_pb,
                "update_mask": field_mask_pb2.FieldMask(paths=differing),
            }
        )
    yield Change("update", "subscription", path, ", ".join(differing))


def _duration(seconds: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds)


def _push_subscription(
    project: str,
    spec: TopicSpec,
    endpoint: str,
    retry_override: RetryPolicy | None,
    push_auth: PushAuth | None,
) -> dict[str, Any]:
    retry = retry_override or spec.push.retry
    push_config: dict[str, Any] = {"push_endpoint": endpoint}
    if push_auth is not None:
        push_config["oidc_token"] = {
            "service_account_email": push_auth.service_account_email,
            "audience": push_auth.audience or endpoint,
        }
    return {
        "name": f"projects/{project}/subscriptions/{spec.push.subscription}",
        "topic": f"projects/{project}/topics/{spec.name}",
        "push_config": push_config,
        "ack_deadline_seconds": spec.push.ack_deadline_seconds,
        "retry_policy": {
            "minimum_backoff": _duration(retry.min_backoff_seconds),
            "maximum_backoff": _duration(retry.max_backoff_seconds),
        },
        "dead_letter_policy": {
            "dead_letter_topic": f"projects/{project}/topics/{spec.dead_letter.topic}",
            "max_delivery_attempts": spec.push.max_delivery_attempts,
        },
    }


def _event_tap(project: str, event: EventSpec) -> dict[str, Any]:
    return {
        "name": f"projects/{project}/subscriptions/{event.subscription}",
        "topic": f"projects/{project}/topics/{event.name}",
        "ack_deadline_seconds": DLQ_ACK_DEADLINE_SECONDS,
        "message_retention_duration": _duration(event.retention_days * 86400),
        # Events published before their consumer exists must wait for it, not expire unseen.
        "expiration_policy": {},
    }


def _dlq_subscription(project: str, spec: TopicSpec, retention_days: int) -> dict[str, Any]:
    return {
        "name": f"projects/{project}/subscriptions/{spec.dead_letter.subscription}",
        "topic": f"projects/{project}/topics/{spec.dead_letter.topic}",
        "ack_deadline_seconds": DLQ_ACK_DEADLINE_SECONDS,
        "message_retention_duration": _duration(retention_days * 86400),
        # Operators' evidence must not vanish because nobody pulled for 31 days.
        "expiration_policy": {},
    }
