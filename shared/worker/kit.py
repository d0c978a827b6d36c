"""The worker kit: one wrapper that gives a collector the dispatcher's guarantees on its side.

For each HTTP task Cloud Tasks delivers, :meth:`TaskWorker.handle`:

1. verifies the OIDC token (audience, issuer, service account): otherwise **401**, nothing
   published, nothing collected;
2. reads the ``X-CloudTasks-*`` headers (:class:`~shared.worker.headers.TaskHeaders`) and
   validates the body against ``collector-task.v1.json``: an invalid body is one ERROR line with
   path and rule; if its dispatch key can still be read, ``failed`` (final) is published and the
   answer is **200** (a retry would fail the same way), otherwise **400**;
3. returns **200** at once, publishing nothing, when the ledger already holds ``succeeded`` for
   the dispatch key (a duplicate delivery; the results function would ignore a second
   ``succeeded`` anyway). The check fails open: a ledger it cannot read does not stop collection;
4. re-checks the subscription (:mod:`shared.worker.checks`): deleted, source removed, paused
   (scheduled runs), expired (manual runs) or slot past ``ends_at`` means ``skipped``, **200**;
5. optionally publishes ``started`` (off by default: a task costs one result message);
6. calls the collector's function and publishes the final outcome: ``succeeded`` (200);
   ``failed`` final for a :class:`~shared.errors.PermanentError` (200: Cloud Tasks must not
   retry); ``failed`` for anything else (503, or a :class:`RetryableCollectError`'s status:
   Cloud Tasks retries).

Every publish is waited for; one that fails answers **503** so Cloud Tasks retries the task and
the outcome is reported by a later attempt (the collection then runs again). Every request
writes exactly one structured log line (the decision) carrying the dispatch key, the task name,
the attempt and the outcome.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from shared.auth import OidcVerifier, TokenRejected
from shared.contracts import get_contract
from shared.envelope import decode_json
from shared.errors import (
    PayloadDecodeError,
    PermanentError,
    RetryableError,
    SchemaValidationError,
)
from shared.logs import log_context
from shared.subscription import InvalidSubscription
from shared.worker.checks import (
    LedgerSucceededCheck,
    SubscriptionReader,
    SucceededCheck,
    subscription_skip_reason,
)
from shared.worker.config import WorkerConfig, load_worker_config
from shared.worker.headers import TaskHeaders
from shared.worker.reporter import (
    Outcome,
    OutcomeReport,
    PubSubResultPublisher,
    ResultPublisher,
    build_result,
    error_text,
)
from shared.worker.task import (
    CollectorTask,
    CollectResult,
    RetryableCollectError,
    parse_task,
)

if TYPE_CHECKING:
    import flask

__all__ = [
    "CollectFunction",
    "TaskWorker",
    "TokenCheck",
    "WorkerDependencies",
    "WorkerReply",
    "request_audience",
    "task_handler",
]

logger = logging.getLogger(__name__)

TASK_SCHEMA: Final = "collector-task.v1.json"
_TASK_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,500}")

#: The collector's own work: collect one source for one slot. ``None`` counts as no items.
CollectFunction = Callable[[CollectorTask], CollectResult | None]


@dataclass(frozen=True)
class TokenCheck:
    """The OIDC verdict: ``verified`` None when verification is off."""

    verified: bool | None
    email: str | None = None
    reason: str | None = None

    def as_record(self) -> dict[str, Any]:
        """``{"verified": True, "email": ...}`` or ``{"verified": False, "reason": ...}``."""
        if self.verified:
            return {"verified": True, "email": self.email}
        return {"verified": False, "reason": self.reason}


@dataclass(frozen=True)
class WorkerReply:
    """What the kit decided for one request, and the HTTP answer that carries it."""

    status: int
    decision: str
    auth: TokenCheck
    outcome: Outcome | None = None
    dispatch_key: Mapping[str, str] | None = None
    published: int = 0
    error: str | None = None

    def body(self) -> dict[str, Any]:
        """The JSON answer (Cloud Tasks keeps only the status; people read the rest)."""
        body: dict[str, Any] = {"decision": self.decision}
        if self.outcome is not None:
            body["outcome"] = self.outcome
        if self.dispatch_key is not None:
            body["dispatch_key"] = dict(self.dispatch_key)
        return body

    def to_response(self) -> flask.Response:
        """A Flask response with :meth:`body` as JSON and :attr:`status`."""
        import flask

        return flask.Response(
            json.dumps(self.body()), status=self.status, mimetype="application/json"
        )


@dataclass(frozen=True)
class WorkerDependencies:
    """Everything the kit talks to; ``None`` turns a check off (logged on every task)."""

    publisher: ResultPublisher
    verifier: OidcVerifier | None = None
    ledger: SucceededCheck | None = None
    subscriptions: SubscriptionReader | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    monotonic: Callable[[], float] = time.monotonic

    @classmethod
    def from_config(cls, config: WorkerConfig) -> WorkerDependencies:
        """The real ones; clients are created on first use, not here."""
        from shared import clients
        from shared.dal.firestore_store import FirestoreSubscriptionStore

        def firestore_client() -> Any:
            from google.cloud import firestore

            return firestore.Client(project=config.project)

        return cls(
            publisher=PubSubResultPublisher(
                clients.publisher,
                config.results_topic_path,
                timeout=config.publish_timeout_seconds,
            ),
            verifier=OidcVerifier(config.certs_url) if config.verify_token else None,
            ledger=(
                LedgerSucceededCheck(config.database_url, timeout=config.dependency_timeout_seconds)
                if config.database_url
                else None
            ),
            subscriptions=(
                FirestoreSubscriptionStore(
                    firestore_client,
                    timeout=config.dependency_timeout_seconds,
                    retry_budget=config.dependency_retry_budget_seconds,
                )
                if config.check_subscription
                else None
            ),
        )


def request_audience(request: flask.Request) -> str:
    """The URL the task was sent to, without its query: Cloud Tasks' default audience.

    Behind Cloud Run's front end the request arrives as plain HTTP with ``X-Forwarded-Proto``
    saying what the caller (Cloud Tasks) used, and so what the token's audience names.
    """
    forwarded = request.headers.get("X-Forwarded-Proto", "")
    scheme = forwarded.split(",", 1)[0].strip() or request.scheme
    return f"{scheme}://{request.host}{request.path}"


class _Decision:
    """One request's decision, built up as the request is handled, logged once."""

    def __init__(self, headers: TaskHeaders, auth: TokenCheck, started: float) -> None:
        self.headers = headers
        self.auth = auth
        self.started = started
        self.key: Mapping[str, str] | None = None
        self.published = 0
        self.fields: dict[str, Any] = {}


class TaskWorker:
    """Runs a collect function under the kit's guarantees (module docstring)."""

    def __init__(
        self,
        collect: CollectFunction,
        config: WorkerConfig,
        dependencies: WorkerDependencies | None = None,
    ) -> None:
        self.collect = collect
        self.config = config
        self.deps = dependencies or WorkerDependencies.from_config(config)

    # -- the request ------------------------------------------------------------------------

    def handle(self, request: flask.Request) -> WorkerReply:
        """Decide, collect if wanted, report, and say which HTTP answer to give."""
        headers = TaskHeaders.from_mapping(dict(request.headers.items()))
        with log_context(task_name=headers.task_name, attempt=headers.attempt):
            auth = self._authenticate(request)
            decision = _Decision(headers, auth, self.deps.monotonic())
            if auth.verified is False:
                return self._reply(
                    decision, 401, "unauthorized", None, auth.reason, level=logging.WARNING
                )
            return self._handle_verified(request, decision)

    def _authenticate(self, request: flask.Request) -> TokenCheck:
        verifier = self.deps.verifier
        if verifier is None:
            return TokenCheck(verified=None)
        try:
            claims = verifier.verify(
                request.headers.get("Authorization"),
                audience=self.config.audience or request_audience(request),
                email=self.config.service_account,
            )
        except TokenRejected as exc:
            return TokenCheck(verified=False, reason=exc.reason)
        email = claims.get("email")
        return TokenCheck(verified=True, email=str(email) if email is not None else None)

    def _handle_verified(self, request: flask.Request, decision: _Decision) -> WorkerReply:
        body, problem = self._read_body(request)
        if problem is not None:
            return self._invalid_body(body, problem, decision)
        task = parse_task(body, decision.headers)
        decision.key = task.key.to_json()
        with log_context(
            subscription_id=task.key.subscription_id,
            slot=task.key.slot_text,
            source_id=task.key.source_id,
            task_name=decision.headers.task_name or task.task_name,
            reason=task.reason,
        ):
            return self._execute(task, decision)

    def _read_body(self, request: flask.Request) -> tuple[Any, dict[str, str] | None]:
        """The decoded body and, if it is not a valid task, what is wrong (path, rule, ...)."""
        if (request.content_length or 0) > self.config.max_body_bytes:
            return None, {"path": "$", "rule": "max_body_bytes", "message": "body too large"}
        raw = request.get_data(cache=True)
        if len(raw) > self.config.max_body_bytes:
            return None, {"path": "$", "rule": "max_body_bytes", "message": "body too large"}
        try:
            body = decode_json(raw)
        except PayloadDecodeError as exc:
            details = exc.details()
            return None, {
                "path": details.get("path", "$"),
                "rule": exc.reason_class,
                "message": exc.message,
            }
        try:
            get_contract(TASK_SCHEMA).validate(body)
        except SchemaValidationError as exc:
            return body, {
                "path": exc.path,
                "rule": exc.rule,
                "schema_path": exc.schema_path,
                "value": exc.value,
                "message": exc.issues[0].message if exc.issues else exc.message,
            }
        return body, None

    def _invalid_body(self, body: Any, problem: dict[str, str], decision: _Decision) -> WorkerReply:
        error = f"invalid task body: {problem['path']}: {problem['rule']}: {problem['message']}"
        decision.fields.update({f"invalid_{k}": v for k, v in problem.items() if k != "message"})
        key = body.get("dispatch_key") if isinstance(body, Mapping) else None
        if isinstance(key, Mapping):
            report = self._report_for(key, "failed", decision, final=True, error=error)
            try:
                message = build_result(report)
            except SchemaValidationError:
                message = None  # the key itself is broken: nothing to report it under
            if message is not None:
                decision.key = {k: str(v) for k, v in key.items()}
                try:
                    self.deps.publisher.publish(message)
                except RetryableError as exc:
                    return self._publish_failed(decision, "failed", exc)
                decision.published += 1
                return self._reply(
                    decision, 200, "invalid-body", "failed", error, level=logging.ERROR
                )
        return self._reply(decision, 400, "invalid-body", None, error, level=logging.ERROR)

    def _execute(self, task: CollectorTask, decision: _Decision) -> WorkerReply:
        if self._already_succeeded(task, decision):
            return self._reply(decision, 200, "already-succeeded", None, None)

        skip = self._skip_reason(task, decision)
        if isinstance(skip, WorkerReply):
            return skip
        if skip is not None:
            return self._finish(task, decision, "skipped", 200, "skipped", error=skip)

        if self.config.report_started:
            try:
                self._publish(task, decision, "started")
            except RetryableError as exc:
                # Nothing collected yet: the retry costs only this attempt.
                return self._publish_failed(decision, "started", exc)

        started = self.deps.monotonic()
        try:
            result = self.collect(task)
        except PermanentError as exc:
            return self._finish(
                task,
                decision,
                "failed",
                200,
                "failed-final",
                error=error_text(exc),
                final=True,
                duration=self.deps.monotonic() - started,
                level=logging.ERROR,
            )
        except RetryableCollectError as exc:
            return self._finish(
                task,
                decision,
                "failed",
                exc.status,
                "failed-retry",
                error=error_text(exc),
                duration=self.deps.monotonic() - started,
                level=logging.WARNING,
            )
        except Exception as exc:
            # Unknown failures are retried (bounded by the queue's max attempts): as likely a
            # transient fault nobody wrapped as a bug, and a fixed deploy can still collect.
            return self._finish(
                task,
                decision,
                "failed",
                503,
                "failed-retry",
                error=error_text(exc),
                duration=self.deps.monotonic() - started,
                level=logging.ERROR,
                exc=exc,
            )
        return self._finish(
            task,
            decision,
            "succeeded",
            200,
            "succeeded",
            items=result.items if result is not None else None,
            duration=self.deps.monotonic() - started,
        )

    # -- checks ------------------------------------------------------------------------------

    def _already_succeeded(self, task: CollectorTask, decision: _Decision) -> bool:
        ledger = self.deps.ledger
        if ledger is None:
            decision.fields["ledger_check"] = "off"
            return False
        try:
            done = ledger.already_succeeded(task.key)
        except RetryableError as exc:
            # A read, not a guarantee (collection is idempotent on the key anyway): a ledger
            # outage must not stop collection.
            decision.fields["ledger_check"] = f"unavailable: {exc.message}"
            return False
        decision.fields["ledger_check"] = "succeeded" if done else "not-succeeded"
        return done

    def _skip_reason(self, task: CollectorTask, decision: _Decision) -> str | WorkerReply | None:
        store = self.deps.subscriptions
        if store is None:
            decision.fields["subscription_check"] = "off"
            return None
        try:
            doc = store.get(task.key.subscription_id)
            reason = subscription_skip_reason(doc, task.key, task.reason)
        except RetryableError as exc:
            return self._finish(
                task,
                decision,
                "failed",
                503,
                "recheck-unavailable",
                error=error_text(exc),
                level=logging.WARNING,
            )
        except InvalidSubscription as exc:
            return self._finish(
                task,
                decision,
                "failed",
                200,
                "invalid-subscription",
                error=f"subscription document is invalid: {exc}",
                final=True,
                level=logging.ERROR,
            )
        decision.fields["subscription_check"] = reason or "collect"
        return reason

    # -- reporting ---------------------------------------------------------------------------

    def _report_for(
        self,
        key: Mapping[str, Any],
        outcome: Outcome,
        decision: _Decision,
        *,
        task_name: str | None = None,
        final: bool = False,
        error: str | None = None,
        items: int | None = None,
        duration: float | None = None,
    ) -> OutcomeReport:
        return OutcomeReport(
            dispatch_key={k: v for k, v in key.items() if isinstance(v, str)},
            outcome=outcome,
            attempt=decision.headers.attempt,
            task_name=_task_name(decision.headers.task_name, task_name),
            final=final,
            duration_ms=round(duration * 1000) if duration is not None else None,
            items=items,
            error=error,
            reported_at=self.deps.clock(),
        )

    def _publish(
        self,
        task: CollectorTask,
        decision: _Decision,
        outcome: Outcome,
        **details: Any,
    ) -> None:
        report = self._report_for(
            task.key.to_json(), outcome, decision, task_name=task.task_name, **details
        )
        self.deps.publisher.publish(build_result(report))
        decision.published += 1

    def _finish(
        self,
        task: CollectorTask,
        decision: _Decision,
        outcome: Outcome,
        status: int,
        name: str,
        *,
        error: str | None = None,
        final: bool = False,
        items: int | None = None,
        duration: float | None = None,
        level: int = logging.INFO,
        exc: BaseException | None = None,
    ) -> WorkerReply:
        if items is not None:
            decision.fields["items"] = items
        try:
            self._publish(
                task, decision, outcome, final=final, error=error, items=items, duration=duration
            )
        except RetryableError as publish_error:
            # The outcome is lost with this attempt; answering 5xx makes Cloud Tasks retry, and
            # the retry collects again before it reports.
            return self._publish_failed(decision, outcome, publish_error, cause=error)
        return self._reply(decision, status, name, outcome, error, level=level, exc=exc)

    def _publish_failed(
        self,
        decision: _Decision,
        outcome: Outcome,
        exc: RetryableError,
        cause: str | None = None,
    ) -> WorkerReply:
        decision.fields["unpublished_outcome"] = outcome
        if cause:
            decision.fields["outcome_error"] = cause
        return self._reply(
            decision,
            503,
            "publish-failed",
            outcome,
            f"result not published: {exc.message}",
            level=logging.ERROR,
        )

    def _reply(
        self,
        decision: _Decision,
        status: int,
        name: str,
        outcome: Outcome | None,
        error: str | None,
        *,
        level: int = logging.INFO,
        exc: BaseException | None = None,
    ) -> WorkerReply:
        reply = WorkerReply(
            status=status,
            decision=name,
            auth=decision.auth,
            outcome=outcome,
            dispatch_key=decision.key,
            published=decision.published,
            error=error,
        )
        key = decision.key or {}
        extra: dict[str, Any] = {
            **decision.fields,
            "decision": name,
            "outcome": outcome,
            "status": status,
            "published": decision.published,
            "task_name": decision.headers.task_name,
            "queue": decision.headers.queue_name,
            "attempt": decision.headers.attempt,
            "duration_ms": round((self.deps.monotonic() - decision.started) * 1000),
        }
        if key:
            extra.update(
                subscription_id=key.get("subscription_id"),
                slot=key.get("slot"),
                source_id=key.get("source_id"),
            )
        if error is not None:
            extra["error"] = error
        if decision.auth.verified is not None:
            extra["auth"] = decision.auth.as_record()
        subject = "/".join(str(key.get(k)) for k in ("subscription_id", "slot", "source_id"))
        logger.log(
            level,
            "task %s: %s (%s)%s",
            decision.headers.task_name or "?",
            name,
            subject if key else "no dispatch key",
            f": {error[:300]}" if error else "",
            extra=extra,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None,
        )
        return reply


def _task_name(header: str | None, body: str | None) -> str | None:
    # The header is Cloud Tasks' word; the body's copy serves a request sent by hand.
    for candidate in (header, body):
        if candidate and _TASK_NAME.fullmatch(candidate):
            return candidate
    return None


# -- the decorator ------------------------------------------------------------------------------


def task_handler(
    config: WorkerConfig | Callable[[], WorkerConfig] | None = None,
    *,
    dependencies: Callable[[WorkerConfig], WorkerDependencies] | None = None,
) -> Callable[[CollectFunction], Callable[[flask.Request], flask.Response]]:
    """Turn a collect function into a functions-framework / Flask HTTP handler::

        @functions_framework.http
        @task_handler()
        def collect(task: CollectorTask) -> CollectResult: ...

    ``config`` (or a function returning it) defaults to :func:`load_worker_config`; it is
    built, with the clients, on the first request, never at import time.
    """

    def decorate(collect: CollectFunction) -> Callable[[flask.Request], flask.Response]:
        lock = threading.Lock()
        holder: list[TaskWorker] = []

        def worker() -> TaskWorker:
            if not holder:
                with lock:
                    if not holder:
                        resolved = config() if callable(config) else config
                        resolved = resolved or load_worker_config()
                        _ensure_logging()
                        deps = dependencies(resolved) if dependencies else None
                        holder.append(TaskWorker(collect, resolved, deps))
            return holder[0]

        def handler(request: flask.Request) -> flask.Response:
            return worker().handle(request).to_response()

        handler.__name__ = getattr(collect, "__name__", "handler")
        handler.__doc__ = collect.__doc__
        handler.__wrapped__ = collect  # type: ignore[attr-defined]
        return handler

    return decorate


def _ensure_logging() -> None:
    from shared.logs import setup_logging

    try:
        from shared.config import get_settings

        settings = get_settings()
        setup_logging(settings.log_level, project=settings.project)
    except Exception:  # logging must come up even when the configuration is broken
        setup_logging()
