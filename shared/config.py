"""Typed configuration, parsed once per process from app.toml, app.<env>.toml and the environment.

Precedence (lowest first): ``app.toml`` < ``app.<DISPATCHER_ENV>.toml`` < environment variables
< explicit keyword arguments to :func:`load_settings`. Every environment variable the project reads
is named in :class:`Env`, so there is one place to look.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.dispatch_key import DispatchKey, shard_of
from shared.paths import project_root


class Env:
    """Names of every environment variable the dispatcher reads."""

    ENVIRONMENT = "DISPATCHER_ENV"
    CONFIG_DIR = "DISPATCHER_CONFIG_DIR"
    PROJECT = "GOOGLE_CLOUD_PROJECT"
    PUBSUB_EMULATOR_HOST = "PUBSUB_EMULATOR_HOST"
    FIRESTORE_EMULATOR_HOST = "FIRESTORE_EMULATOR_HOST"
    CLOUD_TASKS_EMULATOR_HOST = "CLOUD_TASKS_EMULATOR_HOST"
    DATABASE_URL = "DATABASE_URL"
    COLLECTOR_URL = "COLLECTOR_URL"
    LOG_LEVEL = "DISPATCHER_LOG_LEVEL"
    PUSH_AUTH_VERIFY = "DISPATCHER_PUSH_AUTH_VERIFY"
    PUSH_AUTH_AUDIENCE = "DISPATCHER_PUSH_AUTH_AUDIENCE"
    OIDC_CERTS_URL = "DISPATCHER_OIDC_CERTS_URL"
    DEPENDENCY_TIMEOUT = "DISPATCHER_DEPENDENCY_TIMEOUT_SECONDS"
    DEPENDENCY_RETRY_BUDGET = "DISPATCHER_DEPENDENCY_RETRY_BUDGET_SECONDS"
    MAX_TICK_SKEW = "DISPATCHER_MAX_TICK_SKEW_SECONDS"
    # Email deliveries (shared/email_settings.py). The password only ever from the environment:
    # production maps the Secret Manager secret onto it (terraform/deliver.tf).
    SMTP_HOST = "DISPATCHER_SMTP_HOST"
    SMTP_PORT = "DISPATCHER_SMTP_PORT"
    SMTP_PASSWORD = "DISPATCHER_SMTP_PASSWORD"
    DELIVER_URL = "DISPATCHER_DELIVER_URL"
    SNAPSHOT_MAX_AGE = "DISPATCHER_SNAPSHOT_MAX_AGE_SECONDS"


class ConfigError(ValueError):
    """The configuration files or environment are invalid; the message names the key."""


#: Cloud Tasks' ceiling on one queue's ``max_dispatches_per_second`` ("The maximum allowed value
#: is 500", RateLimits reference; quotas page: 500 dispatches per second per queue).
MAX_QUEUE_DISPATCHES_PER_SECOND = 500.0
#: Cloud Tasks' ceiling on one queue's ``max_concurrent_dispatches`` ("The maximum allowed value
#: is 5,000", RateLimits reference).
MAX_QUEUE_CONCURRENT_DISPATCHES = 5000
#: A sane bound on shards per kind (a project holds at most 1,000 queues per region).
MAX_QUEUE_SHARDS = 64


@dataclass(frozen=True)
class QueueConfig:
    """The Cloud Tasks queue(s) of one source kind.

    ``max_dispatches_per_second`` and ``max_concurrent_dispatches`` are the **kind's** totals:
    what the collectors of that kind receive at most, however many shards carry it. With
    ``shards = N`` they are split evenly over N queues (:meth:`shard_rate`,
    :meth:`shard_concurrency`); sharding raises the ceiling of one queue (500/s), never the load
    a kind's collectors were promised. Shard 0 is ``name`` itself (an existing deployment keeps
    its queue and its in-flight tasks); shards 1..N-1 are ``<name>-<i>``.
    """

    kind: str
    name: str
    max_dispatches_per_second: float
    max_concurrent_dispatches: int
    max_attempts: int
    min_backoff_seconds: float
    max_backoff_seconds: float
    max_doublings: int
    collector_url: str | None = None
    shards: int = 1

    def shard_name(self, shard: int) -> str:
        """The queue id of one shard: shard 0 keeps ``name``, the others get ``-<shard>``."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"queue {self.name}: shard {shard} is outside 0..{self.shards - 1}")
        return self.name if shard == 0 else f"{self.name}-{shard}"

    def shard_names(self) -> list[str]:
        """Every shard's queue id, shard 0 first."""
        return [self.shard_name(i) for i in range(self.shards)]

    def shard_rate(self) -> float:
        """One shard queue's ``max_dispatches_per_second``: the kind's rate split evenly."""
        return self.max_dispatches_per_second / self.shards

    def shard_concurrency(self) -> int:
        """One shard queue's ``max_concurrent_dispatches``: the kind's, split, rounded up."""
        return max(1, math.ceil(self.max_concurrent_dispatches / self.shards))

    def retry_span_seconds(self, dispatch_deadline_seconds: float) -> float:
        """The longest a task can take from its first dispatch to its last attempt's end.

        Every attempt may run up to the dispatch deadline; the waits between attempts double
        from min_backoff up to max_doublings times, capped at max_backoff (Cloud Tasks' rule).
        """
        attempts = max(self.max_attempts, 1)
        cap = self.max_backoff_seconds
        waits = [
            min(self.min_backoff_seconds * 2 ** min(n, self.max_doublings), cap)
            for n in range(attempts - 1)
        ]
        return float(attempts * dispatch_deadline_seconds + sum(waits))


# Cloud Tasks' default dispatch deadline for HTTP targets (10 minutes); fanout sets none.
DISPATCH_DEADLINE_SECONDS = 600.0


@dataclass(frozen=True)
class Settings:
    environment: str
    project: str
    region: str
    tasks_location: str
    shard_count: int
    default_jitter_seconds: int
    max_payload_bytes: int
    publish_timeout_seconds: float
    dependency_timeout_seconds: float
    dependency_retry_budget_seconds: float
    firestore_page_size: int
    ledger_retention_days: int
    log_level: str
    collector_url: str
    collector_service_account: str
    push_auth_verify: bool
    push_auth_audience: str
    push_auth_service_account: str
    queues: Mapping[str, QueueConfig] = field(default_factory=dict)
    pubsub_emulator_host: str | None = None
    firestore_emulator_host: str | None = None
    cloud_tasks_emulator_host: str | None = None
    database_url: str | None = None
    oidc_certs_url: str | None = None
    # A created dispatch with no final outcome after this long is lost (maintenance reconcile).
    lost_after_seconds: float = 7200.0
    # How long one results instance holds the right to publish a run's run-completed event.
    completion_lease_seconds: float = 60.0
    # How far ahead of the clock a tick's explicit ``time`` may be before select refuses it
    # (a typo'd year would otherwise move every due next_run_at that far ahead).
    max_tick_skew_seconds: float = 300.0
    # Connections one process's ledger pool may open ([ledger] pool_max_size): one per
    # concurrent request. Terraform sizes max instances so that the sum over the ledger
    # functions of max_instances x this stays inside the database's connection budget.
    ledger_pool_max_size: int = 8
    # fanout trusts the subscription snapshot select put in a schedule / catch-up due message
    # for this long after select read it; older (or manual / replay) messages read Firestore.
    # 0 turns the snapshot off (every message reads Firestore).
    snapshot_max_age_seconds: float = 300.0

    def max_attempts_for(self, kind: str) -> int:
        """The queue's max attempts for a source kind (``-1``: unlimited; unknown kind: -1, so
        a failure of a kind no longer configured is never taken as the last)."""
        queue = self.queues.get(kind)
        return queue.max_attempts if queue is not None else -1

    def queue_for(self, kind: str) -> QueueConfig:
        """The queue that carries tasks of a source kind; unknown kinds are a configuration gap."""
        try:
            return self.queues[kind]
        except KeyError:
            known = ", ".join(sorted(self.queues)) or "none"
            raise ConfigError(
                f"no queue configured for source kind {kind!r} (known: {known})"
            ) from None

    def collector_url_for(self, kind: str) -> str:
        return self.queue_for(kind).collector_url or self.collector_url

    def topic_path(self, topic: str) -> str:
        return f"projects/{self.project}/topics/{topic}"

    def queue_path(self, kind: str, shard: int = 0) -> str:
        """The full resource name of one shard queue of ``kind`` (shard 0: the kind's queue)."""
        return (
            f"projects/{self.project}/locations/{self.tasks_location}/queues/"
            f"{self.queue_for(kind).shard_name(shard)}"
        )

    def queue_paths(self, kind: str) -> list[str]:
        """Every shard queue of ``kind``, shard 0 first (what the stack and Terraform create)."""
        return [self.queue_path(kind, i) for i in range(self.queue_for(kind).shards)]

    def queue_path_for(self, kind: str, key: DispatchKey) -> str:
        """The queue that carries the task of ``key``: its shard is a pure function of the key's
        hash (:func:`shared.dispatch_key.shard_of`), so a retry finds the same queue. Retries and
        reconcile use the queue stored in the ledger row anyway, which survives a shard change."""
        return self.queue_path(kind, shard_of(key, self.queue_for(kind).shards))


def load_settings(
    environ: Mapping[str, str] | None = None, config_dir: Path | None = None, **overrides: Any
) -> Settings:
    """Parse configuration files and environment into :class:`Settings`."""
    environ = os.environ if environ is None else environ
    environment, directory, merged = read_config_files(environ, config_dir)
    try:
        settings = _build(environment, merged, environ)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"configuration in {directory}: {exc}") from exc
    return replace(settings, **overrides) if overrides else settings


def read_config_files(
    environ: Mapping[str, str], config_dir: Path | None = None
) -> tuple[str, Path, dict[str, Any]]:
    """The environment's name, the config directory, and ``app.toml`` with
    ``app.<environment>.toml`` merged over it (the one reading every settings object shares)."""
    environment = environ.get(Env.ENVIRONMENT, "local")
    directory = config_dir or Path(environ.get(Env.CONFIG_DIR) or project_root())
    merged = _read_toml(directory / "app.toml", required=True)
    if environment != "local":
        _deep_merge(merged, _read_toml(directory / f"app.{environment}.toml", required=True))
    return environment, directory, merged


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, parsed on first use (never at import time)."""
    return load_settings()


def _build(environment: str, raw: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    core = _section(raw, "dispatcher")
    collector = _section(raw, "collector")
    push_auth = raw.get("push_auth", {})
    queues = {
        kind: QueueConfig(
            kind=kind,
            name=str(spec["name"]),
            max_dispatches_per_second=float(spec["max_dispatches_per_second"]),
            max_concurrent_dispatches=int(spec["max_concurrent_dispatches"]),
            max_attempts=int(spec["max_attempts"]),
            min_backoff_seconds=float(spec["min_backoff_seconds"]),
            max_backoff_seconds=float(spec["max_backoff_seconds"]),
            max_doublings=int(spec["max_doublings"]),
            collector_url=spec.get("collector_url"),
            shards=int(spec.get("shards", 1)),
        )
        for kind, spec in raw.get("queues", {}).items()
    }
    seen: dict[str, str] = {}
    for queue in queues.values():
        _check_shards(queue)
        for name in queue.shard_names():
            if name in seen:
                raise ConfigError(
                    f"queues.{queue.kind}: queue {name} is also a queue of kind {seen[name]!r}"
                )
            seen[name] = queue.kind
    shard_count = int(core["shard_count"])
    if not 1 <= shard_count <= 1024:
        raise ConfigError(f"dispatcher.shard_count: {shard_count} is outside 1..1024")
    jitter = int(core["default_jitter_seconds"])
    if not 0 <= jitter <= 59:
        raise ConfigError(f"dispatcher.default_jitter_seconds: {jitter} is outside 0..59")
    skew = float(environ.get(Env.MAX_TICK_SKEW) or core.get("max_tick_skew_seconds", 300.0))
    if skew < 0:
        raise ConfigError(f"dispatcher.max_tick_skew_seconds: {skew} is negative")
    pool_max_size = int(raw.get("ledger", {}).get("pool_max_size", 8))
    if not 1 <= pool_max_size <= 100:
        raise ConfigError(f"ledger.pool_max_size: {pool_max_size} is outside 1..100")
    snapshot_age = float(
        environ.get(Env.SNAPSHOT_MAX_AGE) or core.get("snapshot_max_age_seconds", 300.0)
    )
    if snapshot_age < 0:
        raise ConfigError(f"dispatcher.snapshot_max_age_seconds: {snapshot_age} is negative")
    verify_env = environ.get(Env.PUSH_AUTH_VERIFY)
    outcomes = raw.get("outcomes", {})
    lost_after = float(outcomes.get("lost_after_minutes", 120)) * 60
    for queue in queues.values():
        span = queue.retry_span_seconds(DISPATCH_DEADLINE_SECONDS)
        if lost_after <= span:
            raise ConfigError(
                f"outcomes.lost_after_minutes: {lost_after / 60:g} min is not longer than queue "
                f"{queue.name}'s retry span ({span / 60:.1f} min): live tasks would be called lost"
            )
    return Settings(
        environment=environment,
        project=environ.get(Env.PROJECT) or str(core["project"]),
        region=str(core["region"]),
        tasks_location=str(core["tasks_location"]),
        shard_count=shard_count,
        default_jitter_seconds=jitter,
        max_payload_bytes=int(core["max_payload_bytes"]),
        publish_timeout_seconds=float(core["publish_timeout_seconds"]),
        dependency_timeout_seconds=float(
            environ.get(Env.DEPENDENCY_TIMEOUT) or core["dependency_timeout_seconds"]
        ),
        dependency_retry_budget_seconds=float(
            environ.get(Env.DEPENDENCY_RETRY_BUDGET) or core["dependency_retry_budget_seconds"]
        ),
        firestore_page_size=int(core["firestore_page_size"]),
        ledger_retention_days=int(core["ledger_retention_days"]),
        log_level=environ.get(Env.LOG_LEVEL) or str(core["log_level"]),
        collector_url=environ.get(Env.COLLECTOR_URL) or str(collector["url"]),
        collector_service_account=str(collector["service_account"]),
        push_auth_verify=(
            verify_env.lower() in {"1", "true", "yes"}
            if verify_env
            else bool(push_auth.get("verify"))
        ),
        push_auth_audience=environ.get(Env.PUSH_AUTH_AUDIENCE)
        or str(push_auth.get("audience", "")),
        push_auth_service_account=str(push_auth.get("service_account", "")),
        queues=queues,
        pubsub_emulator_host=environ.get(Env.PUBSUB_EMULATOR_HOST) or None,
        firestore_emulator_host=environ.get(Env.FIRESTORE_EMULATOR_HOST) or None,
        cloud_tasks_emulator_host=environ.get(Env.CLOUD_TASKS_EMULATOR_HOST) or None,
        database_url=environ.get(Env.DATABASE_URL) or None,
        oidc_certs_url=environ.get(Env.OIDC_CERTS_URL) or None,
        lost_after_seconds=lost_after,
        completion_lease_seconds=float(outcomes.get("completion_lease_seconds", 60)),
        max_tick_skew_seconds=skew,
        ledger_pool_max_size=pool_max_size,
        snapshot_max_age_seconds=snapshot_age,
    )


def _check_shards(queue: QueueConfig) -> None:
    """A kind's shards are 1..64; no shard queue may be asked for more than 500/s or more than
    5,000 concurrent dispatches (Cloud Tasks refuses both)."""
    where = f"queues.{queue.kind}"
    if not 1 <= queue.shards <= MAX_QUEUE_SHARDS:
        raise ConfigError(f"{where}.shards: {queue.shards} is outside 1..{MAX_QUEUE_SHARDS}")
    if queue.shard_rate() > MAX_QUEUE_DISPATCHES_PER_SECOND:
        needed = math.ceil(queue.max_dispatches_per_second / MAX_QUEUE_DISPATCHES_PER_SECOND)
        raise ConfigError(
            f"{where}.max_dispatches_per_second: {queue.max_dispatches_per_second:g}/s over "
            f"{queue.shards} shard(s) is {queue.shard_rate():g}/s per queue, above Cloud Tasks' "
            f"{MAX_QUEUE_DISPATCHES_PER_SECOND:g}/s per queue: set shards = {needed} or more"
        )
    if queue.shard_concurrency() > MAX_QUEUE_CONCURRENT_DISPATCHES:
        needed = math.ceil(queue.max_concurrent_dispatches / MAX_QUEUE_CONCURRENT_DISPATCHES)
        raise ConfigError(
            f"{where}.max_concurrent_dispatches: {queue.max_concurrent_dispatches} over "
            f"{queue.shards} shard(s) is above Cloud Tasks' {MAX_QUEUE_CONCURRENT_DISPATCHES} per "
            f"queue: set shards = {needed} or more"
        )


def _section(raw: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    section = raw.get(name)
    if not isinstance(section, Mapping):
        raise ConfigError(f"[{name}] section is missing")
    return section


def _read_toml(path: Path, required: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path} does not exist") from None
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _deep_merge(base: dict[str, Any], overlay: Mapping[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value
