"""Typed loader for ``topics.yaml``, the single source of truth for topics and subscriptions.

A broken file gives one :class:`TopologyError` naming the key
(``topics.dispatcher-due.push.retry``), never a stack trace: the CLI prints it and exits 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.paths import project_root

# Limits that Pub/Sub itself enforces: catching them here beats a failed `topics apply` at 3 a.m.
_ACK_DEADLINE_RANGE = (10, 600)
_BACKOFF_RANGE = (0, 600)
_DELIVERY_ATTEMPTS_RANGE = (5, 100)
_RESOURCE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$")
FUNCTION_NAMES = ("select", "fanout", "maintenance", "sync", "results", "plan-deliveries")


class TopologyError(ValueError):
    """topics.yaml is missing, unparsable or inconsistent; ``key`` says where."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"topics.yaml: {key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class RetryPolicy:
    min_backoff_seconds: int
    max_backoff_seconds: int


@dataclass(frozen=True)
class PushSpec:
    subscription: str
    function: str
    ack_deadline_seconds: int
    retry: RetryPolicy
    max_delivery_attempts: int


@dataclass(frozen=True)
class DeadLetterSpec:
    topic: str
    subscription: str


@dataclass(frozen=True)
class TopicSpec:
    name: str
    description: str
    schema: str
    push: PushSpec
    dead_letter: DeadLetterSpec

    @property
    def dead_letter_topic(self) -> str:
        return self.dead_letter.topic


@dataclass(frozen=True)
class EventSpec:
    """A topic one of our functions publishes for later steps, with an operators' pull tap."""

    name: str
    description: str
    schema: str
    publisher: str
    subscription: str
    retention_days: int


@dataclass(frozen=True)
class SchedulerJob:
    name: str
    topic: str
    cron: str
    timezone: str
    message: Mapping[str, Any]


@dataclass(frozen=True)
class Topology:
    topics: tuple[TopicSpec, ...]
    scheduler: tuple[SchedulerJob, ...]
    dead_letter_retention_days: int
    local_retry: RetryPolicy
    events: tuple[EventSpec, ...] = ()

    def topic(self, name: str) -> TopicSpec:
        for spec in self.topics:
            if spec.name == name:
                return spec
        raise KeyError(f"topic {name!r} is not declared in topics.yaml")

    def event(self, name: str) -> EventSpec:
        for spec in self.events:
            if spec.name == name:
                return spec
        raise KeyError(f"event topic {name!r} is not declared in topics.yaml")

    def for_function(self, function: str) -> TopicSpec:
        for spec in self.topics:
            if spec.push.function == function:
                return spec
        raise KeyError(f"no topic in topics.yaml pushes to function {function!r}")

    def for_dead_letter_topic(self, dlq_topic: str) -> TopicSpec:
        for spec in self.topics:
            if spec.dead_letter.topic == dlq_topic:
                return spec
        raise KeyError(f"{dlq_topic!r} is not a dead-letter topic in topics.yaml")


def default_path() -> Path:
    return project_root() / "topics.yaml"


def load_topology(path: Path | None = None) -> Topology:
    """Read and validate topics.yaml (default: the project's own)."""
    path = path or default_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TopologyError("(file)", f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise TopologyError("(file)", f"not valid YAML: {exc}") from exc
    return parse_topology(raw)


def parse_topology(raw: Any) -> Topology:
    root = _mapping(raw, "(root)")
    if root.get("version") != 1:
        raise TopologyError("version", f"expected 1, got {root.get('version')!r}")
    topics_raw = _mapping(root.get("topics"), "topics")
    if not topics_raw:
        raise TopologyError("topics", "no topics declared")
    topics = tuple(_topic(str(name), spec) for name, spec in topics_raw.items())
    functions = [t.push.function for t in topics]
    for function in set(functions):
        if functions.count(function) > 1:
            raise TopologyError("topics", f"function {function!r} is the push target of two topics")
    names = [t.name for t in topics]
    scheduler_raw = _mapping(root.get("scheduler", {}), "scheduler")
    scheduler = tuple(_job(str(n), j, names) for n, j in scheduler_raw.items())
    retention = _int(root.get("dead_letter_retention_days", 7), "dead_letter_retention_days", 1, 31)
    local = _mapping(root.get("local", {}), "local")
    local_retry = _retry(
        local.get("retry", {"min_backoff_seconds": 1, "max_backoff_seconds": 2}), "local.retry"
    )
    events_raw = _mapping(root.get("events", {}), "events")
    events = tuple(_event(str(n), e) for n, e in events_raw.items())
    clash = sorted(set(names) & {e.name for e in events})
    if clash:
        raise TopologyError("events", f"{clash[0]!r} is declared under topics too")
    return Topology(topics, scheduler, retention, local_retry, events)


def _named_with_schema(name: str, raw: Any, key: str) -> tuple[Mapping[str, Any], str]:
    """The entry's mapping and its schema file name, both checked."""
    _resource_name(name, key)
    spec = _mapping(raw, key)
    schema = _str(spec.get("schema"), f"{key}.schema")
    if not (project_root() / "schemas" / schema).is_file():
        raise TopologyError(f"{key}.schema", f"schemas/{schema} does not exist")
    return spec, schema


def _event(name: str, raw: Any) -> EventSpec:
    key = f"events.{name}"
    spec, schema = _named_with_schema(name, raw, key)
    publisher = _str(spec.get("publisher"), f"{key}.publisher")
    if publisher not in FUNCTION_NAMES:
        raise TopologyError(f"{key}.publisher", f"{publisher!r} is not one of {FUNCTION_NAMES}")
    subscription = _resource_name(_str(spec.get("subscription"), f"{key}.subscription"), key)
    return EventSpec(
        name=name,
        description=str(spec.get("description", "")),
        schema=schema,
        publisher=publisher,
        subscription=subscription,
        # Pub/Sub keeps unacknowledged messages of a subscription at most 7 days.
        retention_days=_int(spec.get("retention_days", 7), f"{key}.retention_days", 1, 7),
    )


def _topic(name: str, raw: Any) -> TopicSpec:
    key = f"topics.{name}"
    spec, schema = _named_with_schema(name, raw, key)
    push_raw = _mapping(spec.get("push"), f"{key}.push")
    function = _str(push_raw.get("function"), f"{key}.push.function")
    if function not in FUNCTION_NAMES:
        raise TopologyError(f"{key}.push.function", f"{function!r} is not one of {FUNCTION_NAMES}")
    push = PushSpec(
        subscription=_resource_name(
            _str(push_raw.get("subscription"), f"{key}.push.subscription"),
            f"{key}.push.subscription",
        ),
        function=function,
        ack_deadline_seconds=_int(
            push_raw.get("ack_deadline_seconds"),
            f"{key}.push.ack_deadline_seconds",
            *_ACK_DEADLINE_RANGE,
        ),
        retry=_retry(push_raw.get("retry"), f"{key}.push.retry"),
        max_delivery_attempts=_int(
            push_raw.get("max_delivery_attempts"),
            f"{key}.push.max_delivery_attempts",
            *_DELIVERY_ATTEMPTS_RANGE,
        ),
    )
    dl_raw = _mapping(spec.get("dead_letter"), f"{key}.dead_letter")
    dead_letter = DeadLetterSpec(
        topic=_str(dl_raw.get("topic"), f"{key}.dead_letter.topic"),
        subscription=_str(dl_raw.get("subscription"), f"{key}.dead_letter.subscription"),
    )
    if dead_letter.topic != f"{name}-dlq":
        raise TopologyError(f"{key}.dead_letter.topic", f"must be {name}-dlq")
    if dead_letter.subscription != f"{name}-dlq-sub":
        raise TopologyError(f"{key}.dead_letter.subscription", f"must be {name}-dlq-sub")
    description = str(spec.get("description", ""))
    return TopicSpec(name, description, schema, push, dead_letter)


def _job(name: str, raw: Any, topics: list[str]) -> SchedulerJob:
    key = f"scheduler.{name}"
    spec = _mapping(raw, key)
    topic = _str(spec.get("topic"), f"{key}.topic")
    if topic not in topics:
        raise TopologyError(f"{key}.topic", f"{topic!r} is not declared under topics")
    cron = _str(spec.get("cron"), f"{key}.cron")
    if len(cron.split()) != 5:
        raise TopologyError(f"{key}.cron", f"{cron!r} is not a 5-field cron expression")
    message = _mapping(spec.get("message", {}), f"{key}.message")
    return SchedulerJob(name, topic, cron, _str(spec.get("timezone"), f"{key}.timezone"), message)


def _retry(raw: Any, key: str) -> RetryPolicy:
    spec = _mapping(raw, key)
    low = _int(spec.get("min_backoff_seconds"), f"{key}.min_backoff_seconds", *_BACKOFF_RANGE)
    high = _int(spec.get("max_backoff_seconds"), f"{key}.max_backoff_seconds", *_BACKOFF_RANGE)
    if low > high:
        raise TopologyError(key, f"min_backoff_seconds {low} exceeds max_backoff_seconds {high}")
    return RetryPolicy(low, high)


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TopologyError(key, f"expected a mapping, got {type(value).__name__}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise TopologyError(key, f"expected a non-empty string, got {value!r}")
    return value


def _int(value: Any, key: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TopologyError(key, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise TopologyError(key, f"{value} is outside the allowed range {low}..{high}")
    return value


def _resource_name(value: str, key: str) -> str:
    if not _RESOURCE_NAME.match(value) or value.lower().startswith("goog"):
        raise TopologyError(key, f"{value!r} is not a valid Pub/Sub resource name")
    return value
