"""The deliver function's HTTP side: a Cloud Tasks request in, the use case's answer out.

What Cloud Tasks sees (it retries every non-2xx answer with the email queue's backoff):

* 401: the OIDC token is missing or wrong (audience = the URL called, issuer Google, identity
  ``[email] service_account``). Verification is on in every deployed environment, and locally
  whenever the stack's certificates URL is set (``DISPATCHER_OIDC_CERTS_URL``);
* 400: the body is not JSON, or invalid without a readable delivery key;
* 200: sent, already sent, failed for good (5xx, invalid task, not wanted any more);
* 503: try later (4xx, no connection, another attempt holds the row, a dependency is down).

Every request writes one structured log line with the decision. Dependencies are built on the
first request, never at import.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from typing import Any

import flask

from shared import config
from shared.auth import GOOGLE_CERTS_URL, OidcVerifier, TokenRejected
from shared.email_settings import EmailSettings, load_email_settings
from shared.usecases.deliver import DeliverDependencies, DeliverReply, deliver
from shared.worker.headers import TaskHeaders
from shared.worker.kit import request_audience

logger = logging.getLogger(__name__)


@functools.cache
def _email_settings() -> EmailSettings:
    return load_email_settings()


@functools.cache
def _logging_ready() -> bool:
    from shared.logs import setup_logging

    try:
        settings = config.get_settings()
        setup_logging(settings.log_level, project=settings.project)
    except Exception:  # logging must come up even when the configuration is broken
        setup_logging()
    return True


@functools.cache
def _verifier(certs_url: str) -> OidcVerifier:
    return OidcVerifier(certs_url)


#: The deliver function's ledger pool. Terraform counts it in the database's connection budget
#: (local.deliver_pool_max_size; tests/unit/deploy checks the two agree).
DELIVER_POOL_MAX_SIZE = 1


@functools.cache
def _dependencies() -> DeliverDependencies:
    from shared.dal.firestore_store import FirestoreSubscriptionStore
    from shared.dal.smtp_sender import SmtpSender
    from shared.ledger.deliveries import EmailLedger
    from shared.ledger.repository import open_pool

    settings = config.get_settings()
    email = _email_settings()
    if not settings.database_url:
        raise config.ConfigError("DATABASE_URL is not set: the deliver function needs the ledger")

    def firestore_client() -> Any:
        from google.cloud import firestore

        return firestore.Client(project=settings.project)

    return DeliverDependencies(
        store=EmailLedger(
            # One request per instance (deliver_function.concurrency = 1) makes its statements
            # one after another: one connection, which is what the connection budget counts.
            open_pool(
                settings.database_url,
                max_size=DELIVER_POOL_MAX_SIZE,
                timeout=settings.dependency_timeout_seconds,
            )
        ),
        sender=SmtpSender(email),
        subscriptions=FirestoreSubscriptionStore(
            firestore_client,
            timeout=settings.dependency_timeout_seconds,
            retry_budget=settings.dependency_retry_budget_seconds,
        ),
        settings=email,
        project=settings.project,
        location=settings.tasks_location,
    )


def _must_verify(settings: config.Settings) -> bool:
    return settings.environment != "local" or settings.oidc_certs_url is not None


def handle_email_task(
    request: flask.Request, deps: DeliverDependencies | None = None
) -> tuple[str, int, Mapping[str, str]]:
    """Authenticate, decode and deliver one email task; see the module docstring."""
    _logging_ready()
    if request.method != "POST":
        # Cloud Tasks only POSTs. A GET is a readiness probe or a browser: it is neither a task
        # nor an attack worth an ERROR line (every stack start probed with one and paged for it).
        return "method not allowed", 405, {"Allow": "POST"}
    settings = config.get_settings()
    headers = TaskHeaders.from_mapping(dict(request.headers))
    if _must_verify(settings):
        try:
            _verifier(settings.oidc_certs_url or GOOGLE_CERTS_URL).verify(
                request.headers.get("Authorization"),
                audience=request_audience(request),
                email=_email_settings().service_account,
            )
        except TokenRejected as exc:
            return _answer(DeliverReply(401, "unauthenticated", str(exc)), headers)
    try:
        body = json.loads(request.get_data(cache=False) or b"")
    except ValueError as exc:
        return _answer(DeliverReply(400, "invalid-unreadable", f"body is not JSON: {exc}"), headers)
    try:
        reply = deliver(body, deps or _dependencies(), task_name=headers.task_name)
    except Exception as exc:
        # A dependency is down (Firestore, PostgreSQL) or a bug: nothing was marked sent, so
        # Cloud Tasks' retry is safe; the row, if claimed, is taken over after the lease.
        logger.exception("deliver failed before it could answer")
        reply = DeliverReply(503, "error", f"{type(exc).__name__}: {exc}")
    return _answer(reply, headers)


def _answer(reply: DeliverReply, headers: TaskHeaders) -> tuple[str, int, Mapping[str, str]]:
    fields = {**reply.log_fields(), "task_name": headers.task_name, "retry": headers.retry_count}
    level = (
        logging.ERROR
        if reply.status in (400, 401) or reply.decision == "failed"
        else (logging.WARNING if reply.status >= 500 else logging.INFO)
    )
    logger.log(level, "email task %s", reply.decision, extra=fields)
    body = json.dumps(
        {"decision": reply.decision, "detail": reply.detail, "message_id": reply.message_id}
    )
    return body, reply.status, {"Content-Type": "application/json"}
