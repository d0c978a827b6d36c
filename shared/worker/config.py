"""The worker kit's configuration: one typed object, parsed once, explicit arguments win.

Defaults come from the dispatcher's own :class:`~shared.config.Settings` (project, the
collector service account Cloud Tasks signs as, the emulator's certificates URL, the database),
so a collector deployed beside the dispatcher needs no extra setting; the variables in
:class:`WorkerEnv` override them for collectors deployed elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from shared.auth import GOOGLE_CERTS_URL
from shared.config import ConfigError, Settings, load_settings

__all__ = ["RESULTS_TOPIC", "WorkerConfig", "WorkerEnv", "load_worker_config"]

RESULTS_TOPIC: Final = "dispatcher-results"
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off", ""})


class WorkerEnv:
    """Names of the environment variables the worker kit reads (beyond :class:`Env`)."""

    AUDIENCE = "DISPATCHER_WORKER_AUDIENCE"
    SERVICE_ACCOUNT = "DISPATCHER_WORKER_SERVICE_ACCOUNT"
    VERIFY_TOKEN = "DISPATCHER_WORKER_VERIFY_TOKEN"
    REPORT_STARTED = "DISPATCHER_WORKER_REPORT_STARTED"
    RESULTS_TOPIC = "DISPATCHER_WORKER_RESULTS_TOPIC"


@dataclass(frozen=True)
class WorkerConfig:
    """How a collector verifies, re-checks and reports its tasks.

    ``audience``: the OIDC audience tasks must carry; ``None`` means the URL the request was
    sent to (Cloud Tasks' default, and what fanout asks for). ``service_account``: the identity
    task tokens must carry (``None`` accepts any Google-signed token for the audience: only for
    local experiments). ``certs_url``: Google's certificates, or the Cloud Tasks emulator's.
    ``database_url`` ``None`` turns the "already succeeded" ledger check off;
    ``check_subscription`` False turns the Firestore re-check off (both are logged per task).
    """

    project: str
    audience: str | None = None
    service_account: str | None = None
    certs_url: str = GOOGLE_CERTS_URL
    verify_token: bool = True
    report_started: bool = False
    results_topic: str = RESULTS_TOPIC
    publish_timeout_seconds: float = 30.0
    dependency_timeout_seconds: float = 10.0
    dependency_retry_budget_seconds: float = 20.0
    database_url: str | None = None
    check_subscription: bool = True
    # Cloud Tasks caps a task at 1 MB; our bodies are a few hundred bytes.
    max_body_bytes: int = 1_000_000

    @property
    def results_topic_path(self) -> str:
        """``projects/<project>/topics/<results topic>``."""
        return f"projects/{self.project}/topics/{self.results_topic}"

    @classmethod
    def from_settings(
        cls, settings: Settings, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> WorkerConfig:
        """The configuration for ``settings`` and ``environ`` (default: the process')."""
        environ = os.environ if environ is None else environ
        config = cls(
            project=settings.project,
            audience=environ.get(WorkerEnv.AUDIENCE) or None,
            service_account=environ.get(WorkerEnv.SERVICE_ACCOUNT)
            or settings.collector_service_account
            or None,
            certs_url=settings.oidc_certs_url or GOOGLE_CERTS_URL,
            verify_token=_flag(environ, WorkerEnv.VERIFY_TOKEN, default=True),
            report_started=_flag(environ, WorkerEnv.REPORT_STARTED, default=False),
            results_topic=environ.get(WorkerEnv.RESULTS_TOPIC) or RESULTS_TOPIC,
            publish_timeout_seconds=settings.publish_timeout_seconds,
            dependency_timeout_seconds=settings.dependency_timeout_seconds,
            dependency_retry_budget_seconds=settings.dependency_retry_budget_seconds,
            database_url=settings.database_url,
        )
        return replace(config, **overrides) if overrides else config


def load_worker_config(environ: Mapping[str, str] | None = None, **overrides: Any) -> WorkerConfig:
    """Parse app.toml and the environment into a :class:`WorkerConfig` (call once, at first use)."""
    environ = os.environ if environ is None else environ
    return WorkerConfig.from_settings(load_settings(environ), environ, **overrides)


def _flag(environ: Mapping[str, str], name: str, *, default: bool) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r}: expected true or false")
