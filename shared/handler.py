"""The single entry-point wrapper every Pub/Sub-pushed function uses.

A function's ``main.py`` is a few lines::

    @functions_framework.cloud_event
    def handle(event: CloudEvent) -> None:
        run_pubsub_entrypoint(event, topic="dispatcher-ticks", function="select",
                              use_case=select_due)

and this module does the rest, the same way everywhere:

1. unwrap the envelope (:mod:`shared.envelope`),
2. refuse data over ``max_payload_bytes``, decode UTF-8 JSON, validate against the topic's
   contract (``topics.yaml`` names it),
3. call ``use_case(payload, message)``,
4. route the outcome:

   * success → return (2xx, Pub/Sub acks);
   * :class:`~shared.errors.PermanentError` → publish the original data and attributes to
     ``<topic>-dlq`` with ``dlq_*`` reason attributes, wait until Pub/Sub accepted it, then return
     (2xx). If that publish fails, raise :class:`~shared.errors.DeadLetterPublishError` (5xx):
     Pub/Sub redelivers and nothing is lost;
   * :class:`~shared.errors.RetryableError` → re-raise (5xx); Pub/Sub redelivers with backoff and
     its dead-letter policy forwards the message after max delivery attempts;
   * any other exception → treated as **retryable**: logged with its traceback and re-raised.
     An unknown exception is as likely a transient fault nobody wrapped (a gRPC error, a
     connection reset) as a bug; dead-lettering it would ack a valid message on a transient
     fault, while re-raising is bounded by the subscription's max delivery attempts, after which
     Pub/Sub moves it to the same ``<topic>-dlq`` (with its ``CloudPubSubDeadLetter*``
     attributes), and a fixed deploy can still process the redeliveries.

Exactly one structured log line is written per decision (acked, dead-lettered, dead-letter publish
failed, retry, unexpected error), carrying the event id, topic, function, subscription id and trace.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import flask

from shared import config, topology
from shared.auth import GOOGLE_CERTS_URL, OidcVerifier, TokenRejected
from shared.contracts import get_contract
from shared.deadletter import (
    DATA_MESSAGE,
    DATA_PUSH_BODY,
    DeadLetter,
    DeadLetterPublisher,
    PubSubDeadLetterPublisher,
    build_dead_letter,
)
from shared.envelope import PushMessage, decode_json, from_cloud_event, parse_http_request
from shared.errors import (
    DeadLetterPublishError,
    DispatcherError,
    PayloadTooLargeError,
    PermanentError,
    RetryableError,
    SchemaValidationError,
    preview,
)
from shared.logs import bind_log_context, current_log_context, log_context, setup_logging

logger = logging.getLogger(__name__)

# Use cases may return a result (for tests and logs); the handler ignores it.
UseCase = Callable[[dict[str, Any], PushMessage], object]


class Outcome(Enum):
    """What happened to a message that did not fail the invocation."""

    ACKED = "acked"
    DEAD_LETTERED = "dead-lettered"


@dataclass(frozen=True)
class Route:
    """Everything the wrapper needs to know about the topic a function serves."""

    topic: str
    function: str
    schema: str
    dead_letter_topic: str
    max_payload_bytes: int


RouteResolver = Callable[[str, str], Route]


def resolve_route(topic: str, function: str) -> Route:
    """Build the :class:`Route` for ``topic`` from ``topics.yaml`` and the settings (cached)."""
    return _resolve_route_cached(topic, function)


@functools.cache
def _resolve_route_cached(topic: str, function: str) -> Route:
    spec = topology.load_topology().topic(topic)
    if spec.push.function != function:
        raise LookupError(
            f"topics.yaml pushes {topic} to {spec.push.function!r}, not to {function!r}"
        )
    return Route(
        topic=spec.name,
        function=function,
        schema=spec.schema,
        dead_letter_topic=spec.dead_letter_topic,
        max_payload_bytes=config.get_settings().max_payload_bytes,
    )


# --- process-wide dependencies, replaceable by tests ----------------------------------------


class _Dependencies:
    def __init__(self) -> None:
        self.dead_letters: DeadLetterPublisher | None = None
        self.route_resolver: RouteResolver | None = None
        self.logging_ready = False


_deps = _Dependencies()


def set_dead_letter_publisher(publisher: DeadLetterPublisher | None) -> None:
    """Use ``publisher`` for every dead letter (tests); ``None`` restores the Pub/Sub default."""
    _deps.dead_letters = publisher


def set_route_resolver(resolver: RouteResolver | None) -> None:
    """Resolve routes with ``resolver`` (tests); ``None`` restores :func:`resolve_route`."""
    _deps.route_resolver = resolver


def _dead_letters() -> DeadLetterPublisher:
    if _deps.dead_letters is None:
        _deps.dead_letters = PubSubDeadLetterPublisher()
    return _deps.dead_letters


def _route(topic: str, function: str) -> Route:
    return (_deps.route_resolver or resolve_route)(topic, function)


def _ensure_logging() -> None:
    if _deps.logging_ready:
        return
    try:
        settings = config.get_settings()
        setup_logging(settings.log_level, project=settings.project)
    except Exception:  # logging must come up even when the configuration is broken
        setup_logging()
    _deps.logging_ready = True


# The messages after which the process's heap is frozen (:func:`_settle_heap`).
FREEZE_AFTER_MESSAGES = frozenset({1, 100})


class _Heap:
    lock = threading.Lock()
    messages = 0


def _settle_heap() -> None:
    """Move everything alive after the first message (and again after the 100th) out of the
    garbage collector's reach (``gc.freeze``).

    Profiling fanout under load found about a quarter of its CPU in the cyclic garbage
    collector: every full collection walked the hundreds of thousands of long-lived objects the
    Google, gRPC and protobuf modules and the clients built on the first message keep, though
    none of them ever becomes garbage. Frozen objects are never walked again; reference
    counting still frees them. Only twice, so that request garbage caught in a cycle at that
    moment stays a bounded, one-off leak.
    """
    with _Heap.lock:
        _Heap.messages += 1
        due = _Heap.messages in FREEZE_AFTER_MESSAGES
    if due:
        gc.freeze()


# --- entry points --------------------------------------------------------------------------


def run_pubsub_entrypoint(
    event: Any,
    *,
    topic: str,
    function: str,
    use_case: UseCase,
    dead_letters: DeadLetterPublisher | None = None,
    route: Route | None = None,
) -> Outcome:
    """Handle one CloudEvent from functions-framework (``@functions_framework.cloud_event``).

    Returns normally (2xx) when the message was processed or dead-lettered; raises (5xx) when
    Pub/Sub should redeliver it.
    """
    _ensure_logging()
    route = route or _route(topic, function)
    publisher = dead_letters or _dead_letters()
    raw_body, headers, raw_bytes = _current_request()
    try:
        message = from_cloud_event(event, raw_body=raw_body, headers=headers)
    except PermanentError as exc:  # EnvelopeError or Base64DecodeError: no message to keep
        fallback = raw_bytes if raw_bytes is not None else _event_bytes(event)
        return _reject_envelope(exc, fallback, _event_id(event, raw_body), route, publisher)
    return process_message(message, route=route, use_case=use_case, dead_letters=publisher)


def handle_push_request(
    request: Any,
    *,
    topic: str,
    function: str,
    use_case: UseCase,
    dead_letters: DeadLetterPublisher | None = None,
    route: Route | None = None,
) -> tuple[str, int]:
    """Handle one push request in an ``@functions_framework.http`` function.

    Unlike the CloudEvent path, this sees every request, including ones functions-framework's
    conversion would refuse before user code runs (a push without ``data``, a malformed body),
    and keeps ``subscription`` and ``deliveryAttempt``. Returns ``(body, status)``.
    """
    _ensure_logging()
    if request.method != "POST":
        # Pub/Sub only POSTs. A GET is a health probe or a browser, not a message: answering
        # 405 keeps it out of the dead-letter topic.
        return "method not allowed", 405
    route = route or _route(topic, function)
    refusal = authorize_push(request.headers.get("Authorization"), request.host, route)
    if refusal is not None:
        return refusal
    publisher = dead_letters or _dead_letters()
    body: bytes = request.get_data(cache=True)
    headers = dict(request.headers)
    try:
        try:
            message = parse_http_request(headers, body)
        except PermanentError as exc:  # EnvelopeError or Base64DecodeError
            _reject_envelope(exc, body, _body_message_id(body), route, publisher)
            return "dead-lettered", 200
        outcome = process_message(message, route=route, use_case=use_case, dead_letters=publisher)
    except Exception:
        # Already logged by the decision that raised; the status alone asks for redelivery.
        return "retry", 500
    return outcome.value, 200


def authorize_push(authorization: str | None, host: str, route: Route) -> tuple[str, int] | None:
    """Check the push request's OIDC token when configured to; ``None`` means go ahead.

    A refused request is answered 401 and neither processed nor dead-lettered: its content is
    not trusted, and a forged request must not be able to write into a dead-letter topic.
    A genuine push refused by misconfiguration is redelivered by Pub/Sub and, after max
    delivery attempts, dead-lettered by Pub/Sub itself, so nothing is lost.

    The audience is ``push_auth.audience`` when set, else the function's own HTTPS URL (what
    Terraform puts in each push subscription's ``oidc_token.audience``; a function cannot be
    told its own URL, and TLS ends before the request reaches us, hence the Host header).
    """
    settings = config.get_settings()
    if not settings.push_auth_verify:
        return None
    try:
        _push_verifier(settings.oidc_certs_url or GOOGLE_CERTS_URL).verify(
            authorization,
            audience=settings.push_auth_audience or [f"https://{host}", f"https://{host}/"],
            email=settings.push_auth_service_account or None,
        )
    except TokenRejected as exc:
        logger.warning(
            "push request refused: %s",
            exc.reason,
            extra={"outcome": "unauthorized", "topic": route.topic, "function": route.function},
        )
        return "unauthorized", 401
    return None


@functools.cache
def _push_verifier(certs_url: str) -> OidcVerifier:
    return OidcVerifier(certs_url)


def process_message(
    message: PushMessage,
    *,
    route: Route,
    use_case: UseCase,
    dead_letters: DeadLetterPublisher,
) -> Outcome:
    """Size check → JSON → contract → use case, then route the outcome (see module doc)."""
    started = time.monotonic()
    with log_context(
        event_id=message.message_id,
        topic=route.topic,
        function=route.function,
        pubsub_subscription=message.subscription_short,
        delivery_attempt=message.delivery_attempt,
        trace=message.trace_header,
    ):
        try:
            payload = _decode_and_validate(message, route)
            if isinstance(payload.get("subscription_id"), str):
                bind_log_context(subscription_id=payload["subscription_id"])
            use_case(payload, message)
        except PermanentError as exc:
            return _dead_letter(exc, message, route, dead_letters, started)
        except RetryableError as exc:
            logger.warning(
                "retryable failure, asking Pub/Sub to redeliver: %s",
                exc.message,
                extra=_decision("retry", exc, started),
            )
            raise
        except Exception as exc:
            logger.error(
                "unexpected error (treated as retryable), asking Pub/Sub to redeliver: %s",
                preview(exc, 300),
                exc_info=True,
                extra=_decision("retry", None, started, error_class=type(exc).__name__),
            )
            raise
        logger.info("message processed", extra=_decision("acked", None, started))
        _settle_heap()
        return Outcome.ACKED


def _decode_and_validate(message: PushMessage, route: Route) -> dict[str, Any]:
    if len(message.data) > route.max_payload_bytes:
        raise PayloadTooLargeError(len(message.data), route.max_payload_bytes)
    payload = decode_json(message.data)
    get_contract(route.schema).validate(payload)
    if not isinstance(payload, dict):  # every contract is an object; a schema edit must not lie
        raise SchemaValidationError(
            f"{route.schema}: $: payload must be an object",
            schema=route.schema,
            path="$",
            rule="type",
            schema_path=f"{route.schema}#/type",
            value=preview(payload),
        )
    return payload


def _dead_letter(
    error: PermanentError,
    message: PushMessage,
    route: Route,
    publisher: DeadLetterPublisher,
    started: float,
) -> Outcome:
    letter = build_dead_letter(
        error=error,
        source_topic=route.topic,
        dead_letter_topic=route.dead_letter_topic,
        function=route.function,
        data=message.data,
        attributes=message.attributes,
        message_id=message.message_id,
        subscription=message.subscription,
        publish_time=(
            message.publish_time.isoformat().replace("+00:00", "Z")
            if message.publish_time
            else None
        ),
        delivery_attempt=message.delivery_attempt,
        data_kind=DATA_MESSAGE,
    )
    return _publish_dead_letter(error, letter, publisher, started)


def _reject_envelope(
    error: PermanentError,
    raw: bytes,
    message_id: str,
    route: Route,
    publisher: DeadLetterPublisher,
) -> Outcome:
    started = time.monotonic()
    with log_context(event_id=message_id or None, topic=route.topic, function=route.function):
        letter = build_dead_letter(
            error=error,
            source_topic=route.topic,
            dead_letter_topic=route.dead_letter_topic,
            function=route.function,
            data=raw,
            attributes={},
            message_id=message_id,
            data_kind=DATA_PUSH_BODY,
        )
        return _publish_dead_letter(error, letter, publisher, started)


def _publish_dead_letter(
    error: PermanentError,
    letter: DeadLetter,
    publisher: DeadLetterPublisher,
    started: float,
) -> Outcome:
    topic = letter.topic
    try:
        dlq_message_id = publisher.publish(topic, letter.data, letter.attributes)
    except Exception as exc:
        logger.error(
            "dead-letter publish to %s failed, asking Pub/Sub to redeliver: %s",
            topic,
            preview(exc, 300),
            extra=_decision(
                "retry", error, started, dead_letter_topic=topic, publish_error=type(exc).__name__
            ),
        )
        raise DeadLetterPublishError(f"publish to {topic} failed: {preview(exc, 300)}") from exc
    logger.error(
        "message rejected (%s: %s), dead-lettered to %s",
        error.reason_class,
        error.message,
        topic,
        extra=_decision(
            "dead-lettered",
            error,
            started,
            dead_letter_topic=topic,
            dead_letter_message_id=dlq_message_id,
        ),
    )
    return Outcome.DEAD_LETTERED


def _decision(
    outcome: str, error: DispatcherError | None, started: float, **fields: Any
) -> dict[str, Any]:
    # The context rides on the record itself so that any handler (not only ours, which reads
    # the context at format time) sees the event id, subscription id and trace.
    extra: dict[str, Any] = {
        **current_log_context(),
        "outcome": outcome,
        "duration_ms": round((time.monotonic() - started) * 1000, 2),
        **fields,
    }
    if error is not None:
        extra["error_class"] = error.reason_class
        extra.update({f"error_{k}": v for k, v in error.details().items()})
    return extra


def _current_request() -> tuple[Mapping[str, Any] | None, dict[str, str] | None, bytes | None]:
    """The raw push body and headers, when running inside functions-framework's Flask request."""
    if not flask.has_request_context():
        return None, None, None
    request = flask.request
    raw = request.get_data(cache=True)
    try:
        parsed = request.get_json(silent=True, cache=True)
    except (ValueError, RecursionError):
        parsed = None
    return (parsed if isinstance(parsed, Mapping) else None), dict(request.headers), raw


def _event_bytes(event: Any) -> bytes:
    try:
        return json.dumps(getattr(event, "data", None), default=str).encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return repr(event).encode("utf-8", errors="replace")


def _event_id(event: Any, raw_body: Mapping[str, Any] | None) -> str:
    try:
        value = event["id"]
        if isinstance(value, str) and value:
            return value[:256]
    except Exception:  # a broken event has no id to offer; the dead letter says "(none)"
        pass
    if raw_body is not None:
        message = raw_body.get("message")
        if isinstance(message, Mapping):
            value = message.get("messageId") or message.get("message_id")
            if isinstance(value, str):
                return value[:256]
    return ""


def _body_message_id(body: bytes) -> str:
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if isinstance(parsed, Mapping):
        return _event_id(None, parsed)
    return ""
