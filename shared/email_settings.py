"""Typed settings of the email deliveries: the ``[email]`` table of app.toml and its overlays.

Separate from :class:`shared.config.Settings` because only the planner and the deliver function
need them, and a wrong SMTP port must not stop select or fanout from starting. Parsed the same
way (app.toml < app.<env>.toml < environment < explicit arguments), never at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from shared.config import ConfigError, Env, QueueConfig, read_config_files

SmtpTls = Literal["none", "starttls", "implicit"]
# One SMTP conversation is about this many blocking socket operations (connect, EHLO,
# STARTTLS, EHLO, AUTH, MAIL, RCPT, DATA, the message, QUIT), each bounded by the timeout.
CONVERSATION_OPERATIONS = 10


@dataclass(frozen=True)
class EmailSettings:
    queue: str
    max_dispatches_per_second: float
    max_concurrent_dispatches: int
    max_attempts: int
    min_backoff_seconds: float
    max_backoff_seconds: float
    max_doublings: int
    deliver_url: str
    service_account: str
    sender: str
    message_id_domain: str
    smtp_host: str
    smtp_port: int
    smtp_tls: SmtpTls
    smtp_user: str
    smtp_timeout_seconds: float
    sending_lease_seconds: float
    smtp_password: str | None = None

    def queue_path(self, project: str, location: str) -> str:
        return f"projects/{project}/locations/{location}/queues/{self.queue}"

    def queue_config(self) -> QueueConfig:
        """The email queue in the shape of the collection queues (for the queue admin)."""
        return QueueConfig(
            kind="email",
            name=self.queue,
            max_dispatches_per_second=self.max_dispatches_per_second,
            max_concurrent_dispatches=self.max_concurrent_dispatches,
            max_attempts=self.max_attempts,
            min_backoff_seconds=self.min_backoff_seconds,
            max_backoff_seconds=self.max_backoff_seconds,
            max_doublings=self.max_doublings,
        )


def load_email_settings(
    environ: Mapping[str, str] | None = None, config_dir: Path | None = None, **overrides: Any
) -> EmailSettings:
    """Parse ``[email]`` from the configuration files and the environment."""
    environ = os.environ if environ is None else environ
    _, directory, merged = read_config_files(environ, config_dir)
    raw = merged.get("email")
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[email] section is missing in {directory}/app.toml")
    try:
        settings = _build(raw, environ)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"[email] in {directory}: {exc!r}") from exc
    settings = replace(settings, **overrides) if overrides else settings
    _check(settings)
    return settings


def _build(raw: Mapping[str, Any], environ: Mapping[str, str]) -> EmailSettings:
    tls = str(raw["smtp_tls"])
    if tls not in ("none", "starttls", "implicit"):
        raise ConfigError(f"email.smtp_tls: {tls!r} is not none, starttls or implicit")
    return EmailSettings(
        queue=str(raw["queue"]),
        max_dispatches_per_second=float(raw["max_dispatches_per_second"]),
        max_concurrent_dispatches=int(raw["max_concurrent_dispatches"]),
        max_attempts=int(raw["max_attempts"]),
        min_backoff_seconds=float(raw["min_backoff_seconds"]),
        max_backoff_seconds=float(raw["max_backoff_seconds"]),
        max_doublings=int(raw["max_doublings"]),
        deliver_url=environ.get(Env.DELIVER_URL) or str(raw["deliver_url"]),
        service_account=str(raw["service_account"]),
        sender=str(raw["sender"]),
        message_id_domain=str(raw["message_id_domain"]),
        smtp_host=environ.get(Env.SMTP_HOST) or str(raw["smtp_host"]),
        smtp_port=int(environ.get(Env.SMTP_PORT) or raw["smtp_port"]),
        smtp_tls=tls,  # type: ignore[arg-type]  # checked just above
        smtp_user=str(raw.get("smtp_user", "")),
        smtp_timeout_seconds=float(raw["smtp_timeout_seconds"]),
        sending_lease_seconds=float(raw["sending_lease_seconds"]),
        smtp_password=environ.get(Env.SMTP_PASSWORD) or None,
    )


def _check(settings: EmailSettings) -> None:
    conversation = settings.smtp_timeout_seconds * CONVERSATION_OPERATIONS
    if settings.sending_lease_seconds <= conversation:
        raise ConfigError(
            f"email.sending_lease_seconds: {settings.sending_lease_seconds:g} s does not outlast "
            f"one SMTP conversation ({CONVERSATION_OPERATIONS} x smtp_timeout_seconds = "
            f"{conversation:g} s): a slow attempt could be overtaken and the email sent twice"
        )
    if settings.smtp_user and not settings.smtp_password:
        raise ConfigError(
            f"email.smtp_user is set but {Env.SMTP_PASSWORD} is empty "
            "(production: the Secret Manager secret is not mapped onto the function)"
        )
    if not 1 <= settings.smtp_port <= 65535:
        raise ConfigError(f"email.smtp_port: {settings.smtp_port} is not a TCP port")
