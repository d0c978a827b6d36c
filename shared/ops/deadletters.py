"""Dead letters: list, show, replay and purge the ``<topic>-dlq-sub`` pull subscriptions.

Two writers put messages on a dead-letter topic (see ``schemas/dead-letter.v1.json``):

* our functions, for a permanent error: original data and attributes plus ``dlq_*`` reasons,
  ``dlq_source_topic`` naming where it came from;
* Pub/Sub's dead-letter policy, after the push subscription's max delivery attempts: original data
  and attributes plus ``CloudPubSubDeadLetter*``; the source topic is the dead-letter topic's
  (``<topic>-dlq``) source in ``topics.yaml``.

Reading never consumes: messages are pulled, looked at, and released (ack deadline 0) at the end,
so listing twice shows the same messages. Replay publishes the original data unchanged with the
original attributes (both families of dead-letter attributes removed, ``replayed_from`` and
``replay_count`` added) to the source topic, waits until Pub/Sub accepted it, and only then acks
the dead letter; a failed publish leaves the dead letter where it was. Replaying the original
data keeps the dispatch key, so a replay never dispatches a source twice.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from shared.deadletter import DATA_PUSH_BODY
from shared.topology import TopicSpec, Topology

PUBSUB_PREFIX = "CloudPubSubDeadLetter"
OUR_PREFIX = "dlq_"
REPLAYED_FROM = "replayed_from"
REPLAY_COUNT = "replay_count"
#: Reason class shown for messages Pub/Sub forwarded after its max delivery attempts.
RETRIES_EXHAUSTED = "DeliveryAttemptsExhausted"
PULL_BATCH = 100
# Leases of held messages are renewed well before the dead-letter subscription's 60 s deadline.
LEASE_SECONDS = 60
RENEW_EVERY_SECONDS = 20.0
PULL_TIMEOUT_SECONDS = 30.0


class DeadLetterError(ValueError):
    """A user mistake in a dead-letter command (unknown topic, bad filter)."""


# --- one dead letter --------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterMessage:
    """One message pulled from a dead-letter subscription (still leased by us)."""

    source: TopicSpec
    message_id: str
    ack_id: str
    data: bytes
    attributes: Mapping[str, str]
    publish_time: datetime | None = None
    delivery_attempt: int | None = None

    @property
    def dlq_topic(self) -> str:
        """The dead-letter topic it sits on."""
        return self.source.dead_letter.topic

    @property
    def origin(self) -> Literal["rejected", "retries-exhausted", "unknown"]:
        """``rejected`` by a function, forwarded by Pub/Sub after ``retries-exhausted``."""
        if f"{OUR_PREFIX}reason_class" in self.attributes:
            return "rejected"
        if any(k.startswith(PUBSUB_PREFIX) for k in self.attributes):
            return "retries-exhausted"
        return "unknown"

    @property
    def source_topic(self) -> str:
        """Where a replay publishes: ``dlq_source_topic``, else the topic this DLQ serves."""
        return self.attributes.get(f"{OUR_PREFIX}source_topic") or self.source.name

    @property
    def reason_class(self) -> str:
        """The error class (or :data:`RETRIES_EXHAUSTED`, or ``unknown``)."""
        if self.origin == "retries-exhausted":
            return RETRIES_EXHAUSTED
        return self.attributes.get(f"{OUR_PREFIX}reason_class", "unknown")

    @property
    def reason(self) -> str:
        """A sentence saying why it is here."""
        if self.origin == "retries-exhausted":
            count = self.attributes.get(f"{PUBSUB_PREFIX}SourceDeliveryCount", "?")
            sub = self.attributes.get(f"{PUBSUB_PREFIX}SourceSubscription", "?")
            return (
                f"Pub/Sub gave up after {count} delivery attempts on {sub}: the function kept "
                "failing with a retryable error (see its logs for this message id)"
            )
        return self.attributes.get(f"{OUR_PREFIX}reason", "no reason recorded")

    @property
    def payload(self) -> Any:
        """The data as JSON, or ``None`` when it is not JSON."""
        try:
            return json.loads(self.data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None

    @property
    def subscription_id(self) -> str | None:
        """The subscription the message is about, from its data or its attributes."""
        payload = self.payload
        if isinstance(payload, Mapping) and isinstance(payload.get("subscription_id"), str):
            return str(payload["subscription_id"])
        return self.attributes.get("subscription_id")

    @property
    def replayable(self) -> str | None:
        """``None`` if replay can republish it, else why not."""
        if self.attributes.get(f"{OUR_PREFIX}data") == DATA_PUSH_BODY:
            return (
                "its data is a whole push request body (the envelope itself was broken), "
                "not a message that can be published again"
            )
        return None

    def replay_attributes(self) -> dict[str, str]:
        """The original attributes, without either family of dead-letter attributes, plus
        ``replayed_from`` (this dead letter's id) and ``replay_count``."""
        out = {
            k: v
            for k, v in self.attributes.items()
            if not k.startswith((OUR_PREFIX, PUBSUB_PREFIX))
        }
        previous = out.get(REPLAY_COUNT, "0")
        out[REPLAY_COUNT] = str(int(previous) + 1 if previous.isdigit() else 1)
        out[REPLAYED_FROM] = self.message_id
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``: data as text when it is UTF-8, else base64."""
        try:
            text: str | None = self.data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return {
            "message_id": self.message_id,
            "dlq_topic": self.dlq_topic,
            "source_topic": self.source_topic,
            "origin": self.origin,
            "reason_class": self.reason_class,
            "reason": self.reason,
            "subscription_id": self.subscription_id,
            "publish_time": self.publish_time.isoformat() if self.publish_time else None,
            "delivery_attempt": self.delivery_attempt,
            "replayable": self.replayable is None,
            "not_replayable_because": self.replayable,
            "data": text,
            "data_base64": base64.b64encode(self.data).decode("ascii"),
            "attributes": dict(sorted(self.attributes.items())),
        }


# --- filters ------------------------------------------------------------------------------------

_ALIASES = {
    "reason": "reason_class",
    "class": "reason_class",
    "subscription": "subscription_id",
    "id": "message_id",
    "topic": "source_topic",
}
_DERIVED = {
    "reason_class",
    "subscription_id",
    "message_id",
    "source_topic",
    "origin",
    "reason",
    "data",
}


@dataclass(frozen=True)
class Filter:
    """``KEY=VALUE`` (equal), ``KEY!=VALUE`` (not equal) or ``KEY~TEXT`` (contains, any case).

    KEY is an attribute name or one of ``reason`` (class), ``subscription_id``, ``message_id``,
    ``source_topic``, ``origin``, ``data``.
    """

    key: str
    op: Literal["=", "!=", "~"]
    value: str

    @classmethod
    def parse(cls, text: str) -> Filter:
        """Parse one filter expression; :class:`DeadLetterError` if malformed."""
        # The first operator in the text splits it: values may contain '=' or '~' themselves.
        match = re.search(r"!=|~|=", text)
        if match is not None and text[: match.start()].strip():
            key = text[: match.start()].strip()
            op: Literal["=", "!=", "~"] = (
                "!=" if match.group() == "!=" else ("~" if match.group() == "~" else "=")
            )
            return cls(_ALIASES.get(key, key), op, text[match.end() :])
        raise DeadLetterError(
            f"filter {text!r}: expected KEY=VALUE, KEY!=VALUE or KEY~TEXT "
            "(KEY: an attribute, reason, subscription_id, message_id, source_topic, origin, data)"
        )

    def value_of(self, letter: DeadLetterMessage) -> str | None:
        """The field this filter looks at, for one message."""
        if self.key in _DERIVED:
            if self.key == "data":
                return letter.data.decode("utf-8", errors="replace")
            value = getattr(letter, self.key)
            return None if value is None else str(value)
        return letter.attributes.get(self.key)

    def matches(self, letter: DeadLetterMessage) -> bool:
        """Whether ``letter`` passes this filter (a missing field never equals anything)."""
        actual = self.value_of(letter)
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        return actual is not None and self.value.lower() in actual.lower()


def parse_filters(texts: Iterable[str]) -> list[Filter]:
    """Every ``--filter``; all must match (AND)."""
    return [Filter.parse(t) for t in texts]


def matches_all(letter: DeadLetterMessage, filters: Sequence[Filter]) -> bool:
    """Whether every filter matches."""
    return all(f.matches(letter) for f in filters)


# --- the queue ---------------------------------------------------------------------------------


def resolve_topics(topology: Topology, names: Sequence[str] | None) -> list[TopicSpec]:
    """The topics whose dead letters to read: ``--topic`` accepts the source topic
    (``dispatcher-due``), its dead-letter topic (``dispatcher-due-dlq``) or its DLQ subscription
    (``dispatcher-due-dlq-sub``); none given means every topic in topics.yaml."""
    if not names:
        return list(topology.topics)
    out: list[TopicSpec] = []
    for name in names:
        for spec in topology.topics:
            if name in (spec.name, spec.dead_letter.topic, spec.dead_letter.subscription):
                if spec not in out:
                    out.append(spec)
                break
        else:
            known = ", ".join(s.name for s in topology.topics)
            raise DeadLetterError(f"unknown topic {name!r} (topics.yaml has: {known})")
    return out


Decision = Literal["ack", "release"]


@dataclass
class ReplayReport:
    """What replay (or purge) did, message by message."""

    dry_run: bool = False
    replayed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    purged: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """How many of each."""
        return {
            "replayed": len(self.replayed),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "purged": len(self.purged),
        }

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "dry_run": self.dry_run,
            "counts": self.counts(),
            "replayed": self.replayed,
            "skipped": self.skipped,
            "failed": self.failed,
            "purged": self.purged,
        }


class DeadLetterQueues:
    """The dead-letter subscriptions of a project, through a synchronous-pull subscriber."""

    def __init__(
        self,
        *,
        subscriber: Any,
        publisher: Any,
        project: str,
        topology: Topology,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._subscriber = subscriber
        self._publisher = publisher
        self._project = project
        self._topology = topology
        self._clock = clock

    def _path(self, spec: TopicSpec) -> str:
        return f"projects/{self._project}/subscriptions/{spec.dead_letter.subscription}"

    # -- the generic walk --------------------------------------------------------------------

    def walk(
        self,
        topics: Sequence[TopicSpec],
        decide: Callable[[DeadLetterMessage], Decision],
        *,
        limit: int | None = None,
        filters: Sequence[Filter] = (),
        on_message: Callable[[DeadLetterMessage], None] | None = None,
    ) -> int:
        """Pull every matching dead letter (up to ``limit``), call ``decide`` on each, ack those it
        says ``ack`` right away and release the rest at the end. Returns how many matched.

        Held messages are not released until the end so that the same pull loop never sees them
        again; their leases are renewed while the walk runs.
        """
        matched = 0
        for spec in topics:
            path = self._path(spec)
            held: list[str] = []
            seen: set[str] = set()
            renewed_at = self._clock()
            empty_pulls = 0
            try:
                while limit is None or matched < limit:
                    want = PULL_BATCH if limit is None else min(PULL_BATCH, limit - matched)
                    received = self._pull(path, want)
                    if not received:
                        # The emulator, and Pub/Sub with return_immediately, may answer empty
                        # once while messages exist; two empty answers in a row mean drained.
                        empty_pulls += 1
                        if empty_pulls >= 2:
                            break
                        continue
                    empty_pulls = 0
                    to_ack: list[str] = []
                    for item in received:
                        letter = self._letter(spec, item)
                        if letter.message_id in seen:
                            held.append(letter.ack_id)
                            continue
                        seen.add(letter.message_id)
                        if (limit is not None and matched >= limit) or not matches_all(
                            letter, filters
                        ):
                            held.append(letter.ack_id)
                            continue
                        matched += 1
                        if decide(letter) == "ack":
                            to_ack.append(letter.ack_id)
                        else:
                            held.append(letter.ack_id)
                        if on_message is not None:
                            on_message(letter)
                    if to_ack:
                        self._subscriber.acknowledge(
                            request={"subscription": path, "ack_ids": to_ack}
                        )
                    if held and self._clock() - renewed_at > RENEW_EVERY_SECONDS:
                        self._lease(path, held, LEASE_SECONDS)
                        renewed_at = self._clock()
            finally:
                if held:
                    self._lease(path, held, 0)
        return matched

    def _pull(self, path: str, max_messages: int) -> list[Any]:
        response = self._subscriber.pull(
            request={
                "subscription": path,
                "max_messages": max_messages,
                "return_immediately": True,
            },
            timeout=PULL_TIMEOUT_SECONDS,
        )
        return list(response.received_messages)

    def _lease(self, path: str, ack_ids: list[str], seconds: int) -> None:
        for start in range(0, len(ack_ids), 1000):
            self._subscriber.modify_ack_deadline(
                request={
                    "subscription": path,
                    "ack_ids": ack_ids[start : start + 1000],
                    "ack_deadline_seconds": seconds,
                }
            )

    @staticmethod
    def _letter(spec: TopicSpec, item: Any) -> DeadLetterMessage:
        message = item.message
        publish_time = getattr(message, "publish_time", None)
        when: datetime | None = None
        if isinstance(publish_time, datetime):
            when = publish_time.astimezone(UTC) if publish_time.tzinfo else publish_time
        elif publish_time is not None and hasattr(publish_time, "ToDatetime"):
            when = publish_time.ToDatetime(tzinfo=UTC)
        attempt = getattr(item, "delivery_attempt", 0) or None
        return DeadLetterMessage(
            source=spec,
            message_id=str(message.message_id),
            ack_id=str(item.ack_id),
            data=bytes(message.data),
            attributes=dict(message.attributes),
            publish_time=when,
            delivery_attempt=attempt,
        )

    # -- the commands ------------------------------------------------------------------------

    def peek(
        self,
        topics: Sequence[TopicSpec],
        *,
        limit: int | None = None,
        filters: Sequence[Filter] = (),
    ) -> list[DeadLetterMessage]:
        """The matching dead letters, left in place (nothing is acknowledged)."""
        found: list[DeadLetterMessage] = []
        self.walk(
            topics, lambda _: "release", limit=limit, filters=filters, on_message=found.append
        )
        return found

    def replay(
        self,
        topics: Sequence[TopicSpec],
        *,
        limit: int | None = None,
        filters: Sequence[Filter] = (),
        dry_run: bool = False,
        on_message: Callable[[DeadLetterMessage], None] | None = None,
    ) -> ReplayReport:
        """Republish each matching dead letter to its source topic, ack it once published."""
        report = ReplayReport(dry_run=dry_run)
        known = {spec.name for spec in self._topology.topics}

        def decide(letter: DeadLetterMessage) -> Decision:
            entry = {"message_id": letter.message_id, "topic": letter.source_topic}
            why = letter.replayable
            if why is None and letter.source_topic not in known:
                why = f"source topic {letter.source_topic!r} is not in topics.yaml"
            if why is not None:
                report.skipped.append({**entry, "why": why})
                return "release"
            if dry_run:
                report.replayed.append({**entry, "new_message_id": ""})
                return "release"
            try:
                new_id = self._publisher.publish(
                    letter.source_topic, letter.data, letter.replay_attributes()
                )
            except Exception as exc:  # any failure: the dead letter must stay where it is
                report.failed.append({**entry, "error": f"{type(exc).__name__}: {exc}"[:500]})
                return "release"
            report.replayed.append({**entry, "new_message_id": str(new_id)})
            return "ack"

        self.walk(topics, decide, limit=limit, filters=filters, on_message=on_message)
        return report

    def purge(
        self,
        topics: Sequence[TopicSpec],
        *,
        limit: int | None = None,
        filters: Sequence[Filter] = (),
        dry_run: bool = False,
        on_message: Callable[[DeadLetterMessage], None] | None = None,
    ) -> ReplayReport:
        """Acknowledge (delete) every matching dead letter; with ``dry_run`` only count them."""
        report = ReplayReport(dry_run=dry_run)

        def decide(letter: DeadLetterMessage) -> Decision:
            report.purged.append({"message_id": letter.message_id, "topic": letter.dlq_topic})
            return "release" if dry_run else "ack"

        self.walk(topics, decide, limit=limit, filters=filters, on_message=on_message)
        return report
