"""The entry-point wrapper, driven through functions-framework's test client in the real push
encoding (the body Pub/Sub POSTs), for both the CloudEvent and the HTTP function signatures."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest

from shared import handler
from shared.errors import ConflictError, DependencyUnavailableError, UnknownSubscriptionError
from tests.unit.contracts.conftest import (
    CE_TARGETS,
    EVENTS,
    TEST_MAX_PAYLOAD_BYTES,
    client,
    load_event,
    push_body,
)
from tests.unit.contracts.recorder import DEAD_LETTERS, USE_CASES

CONTRACT_TOPICS = {
    "tick": "dispatcher-ticks",
    "due": "dispatcher-due",
    "maintenance": "dispatcher-maintenance",
    "sync": "dispatcher-sync",
}
REQUIRED_REASON = (
    "dlq_reason_class",
    "dlq_reason",
    "dlq_source_topic",
    "dlq_source_message_id",
    "dlq_failed_at",
    "dlq_function",
)


def _post(target: str, body: Any, **kwargs: Any) -> Any:
    return client(target).post("/", json=body, **kwargs)


def _golden_files() -> list[tuple[str, str, str]]:
    # The test-only function file has HTTP targets for two topics; CloudEvent ones for all four.
    return [
        (contract, path.name, signature)
        for contract, topic in CONTRACT_TOPICS.items()
        for path in sorted((EVENTS / contract).glob("*.json"))
        if path.name != "expected.json"
        for signature in ("ce", "http")
        if signature == "ce" or topic in ("dispatcher-due", "dispatcher-ticks")
    ]


def _handler_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "shared.handler"]


@pytest.mark.parametrize(("contract", "file", "signature"), _golden_files())
def test_golden_contract_events_through_a_function(
    contract: str, file: str, signature: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = CONTRACT_TOPICS[contract]
    target = CE_TARGETS[topic] if signature == "ce" else CE_TARGETS[topic].replace("ce_", "http_")
    raw = (EVENTS / contract / file).read_bytes()
    caplog.set_level(logging.INFO)
    response = _post(target, push_body(raw, attributes={"origin": "golden"}, message_id="m-1"))
    assert response.status_code == 200
    decisions = _handler_records(caplog)
    assert len(decisions) == 1, "one log line per decision"
    if file.startswith("valid-"):
        assert DEAD_LETTERS.published == []
        [(called_topic, payload, message)] = USE_CASES.calls
        assert (called_topic, payload) == (topic, json.loads(raw))
        assert message.message_id == "m-1"
        assert decisions[0].levelno == logging.INFO
        return
    expected = load_event(contract, "expected.json")[file]
    assert USE_CASES.calls == [], "an invalid message never reaches the use case"
    [letter] = DEAD_LETTERS.published
    assert letter.topic == f"{topic}-dlq"
    assert letter.data == raw, "the original bytes, unchanged"
    attrs = letter.attributes
    assert attrs["origin"] == "golden", "original attributes preserved"
    assert all(attrs[k] for k in REQUIRED_REASON)
    assert attrs["dlq_reason_class"] == "SchemaValidationError"
    assert (attrs["dlq_path"], attrs["dlq_rule"]) == (expected["path"], expected["rule"])
    assert attrs["dlq_source_topic"] == topic
    assert attrs["dlq_source_message_id"] == "m-1"
    assert attrs["dlq_source_subscription"].endswith("/test-push")
    assert all(len(v.encode()) <= 1024 for v in attrs.values())
    record = decisions[0]
    assert record.levelno == logging.ERROR
    assert (getattr(record, "error_path", None), getattr(record, "error_rule", None)) == (
        expected["path"],
        expected["rule"],
    )


@pytest.mark.parametrize(
    "name", sorted(k for k in load_event("push", "expected.json") if k[0] != "$")
)
@pytest.mark.parametrize("signature", ["ce", "http"])
def test_golden_push_requests(name: str, signature: str) -> None:
    expected = load_event("push", "expected.json")[name]
    body = load_event("push", name)
    target = "ce_fanout" if signature == "ce" else "http_fanout"
    if "content_type" in expected:
        response = client(target).post(
            "/", data=json.dumps(body), content_type=expected["content_type"]
        )
    else:
        response = _post(target, body)
    outcome = expected[signature]
    if outcome == "framework-400":
        # functions-framework refuses a push without data before user code runs: 4xx, so
        # Pub/Sub redelivers and its dead-letter policy forwards it. Use the HTTP signature
        # to dead-letter it at once (see the http case of this golden).
        assert response.status_code == 400
        assert USE_CASES.calls == [] and DEAD_LETTERS.published == []
        return
    assert response.status_code == 200
    if outcome == "acked":
        [(_, payload, message)] = USE_CASES.calls
        assert payload == {"subscription_id": "acme-news"}
        assert message.message_id == expected["message_id"]
        assert message.delivery_attempt == expected["delivery_attempt"]
        assert message.subscription == expected["subscription"]
        assert DEAD_LETTERS.published == []
        return
    [letter] = DEAD_LETTERS.published
    assert letter.attributes["dlq_reason_class"] == outcome
    assert USE_CASES.calls == []
    if letter.attributes["dlq_data"] == "message-data":
        assert letter.data == base64.b64decode(body["message"].get("data", ""))
    else:
        assert json.loads(letter.data) == body, "the whole push body is kept"


@pytest.mark.parametrize("target", ["ce_fanout", "http_fanout"])
def test_permanent_error_from_the_use_case_is_dead_lettered_then_acked(target: str) -> None:
    USE_CASES.error = UnknownSubscriptionError("ghost")
    response = _post(target, push_body(b'{"subscription_id": "ghost"}', delivery_attempt=1))
    assert response.status_code == 200
    [letter] = DEAD_LETTERS.published
    assert letter.attributes["dlq_reason_class"] == "UnknownSubscriptionError"
    assert letter.attributes["dlq_path"] == "$.subscription_id"
    assert letter.attributes["dlq_delivery_attempt"] == "1"
    assert len(USE_CASES.calls) == 1


@pytest.mark.parametrize("target", ["ce_fanout", "http_fanout"])
@pytest.mark.parametrize(
    "error", [DependencyUnavailableError("firestore", "503"), ConflictError("aborted")]
)
def test_retryable_error_answers_5xx_and_dead_letters_nothing(
    target: str, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    USE_CASES.error = error
    caplog.set_level(logging.INFO)
    response = _post(target, push_body(b'{"subscription_id": "acme-news"}'))
    assert response.status_code >= 500
    assert DEAD_LETTERS.attempts == 0
    [record] = _handler_records(caplog)
    assert record.levelno == logging.WARNING
    assert getattr(record, "outcome", None) == "retry"


@pytest.mark.parametrize("target", ["ce_fanout", "http_fanout"])
def test_unexpected_exception_is_retried_not_dead_lettered(
    target: str, caplog: pytest.LogCaptureFixture
) -> None:
    USE_CASES.error = KeyError("bug")
    response = _post(target, push_body(b'{"subscription_id": "acme-news"}'))
    assert response.status_code >= 500
    assert DEAD_LETTERS.attempts == 0
    [record] = _handler_records(caplog)
    assert record.levelno == logging.ERROR and record.exc_info is not None


@pytest.mark.parametrize("target", ["ce_fanout", "http_fanout"])
@pytest.mark.parametrize("data", [b"not json", b'{"subscription_id": 1}', b"\xff"])
def test_failed_dead_letter_publish_answers_5xx(target: str, data: bytes) -> None:
    DEAD_LETTERS.error = TimeoutError("publish timed out")
    response = _post(target, push_body(data))
    assert response.status_code >= 500, "not acked: Pub/Sub must redeliver, nothing is lost"
    assert DEAD_LETTERS.attempts == 1
    # Once the dead-letter topic works again, the redelivery is dead-lettered and acked.
    DEAD_LETTERS.error = None
    assert _post(target, push_body(data)).status_code == 200
    assert len(DEAD_LETTERS.published) == 1


@pytest.mark.parametrize("target", ["ce_fanout", "http_fanout"])
def test_payload_over_the_limit_is_dead_lettered(target: str) -> None:
    data = json.dumps({"subscription_id": "a" * TEST_MAX_PAYLOAD_BYTES}).encode()
    response = _post(target, push_body(data))
    assert response.status_code == 200
    [letter] = DEAD_LETTERS.published
    assert letter.attributes["dlq_reason_class"] == "PayloadTooLargeError"
    assert letter.data == data


def test_http_signature_dead_letters_a_body_that_is_not_a_push() -> None:
    response = client("http_fanout").post("/", data=b"[1, 2]", content_type="application/json")
    assert response.status_code == 200
    [letter] = DEAD_LETTERS.published
    assert letter.attributes["dlq_reason_class"] == "EnvelopeError"
    assert letter.attributes["dlq_data"] == "push-body"
    assert letter.data == b"[1, 2]"


def test_log_context_carries_subscription_and_trace(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    body = load_event("push", "pubsub-push.json")
    assert _post("ce_fanout", body).status_code == 200
    [record] = _handler_records(caplog)
    formatted = json.loads(handler_formatter().format(record))
    assert formatted["event_id"] == "2070443601311540"
    assert formatted["subscription_id"] == "acme-news"
    assert formatted["logging.googleapis.com/trace"] == (
        "projects/test-project/traces/0af7651916cd43dd8448eb211c80319c"
    )
    assert formatted["logging.googleapis.com/labels"]["topic"] == "dispatcher-due"


def handler_formatter() -> logging.Formatter:
    from shared.logs import CloudLoggingFormatter

    return CloudLoggingFormatter(project="test-project")


def test_real_routes_come_from_topics_yaml() -> None:
    handler.set_route_resolver(None)
    route = handler.resolve_route("dispatcher-due", "fanout")
    assert (route.schema, route.dead_letter_topic) == ("due.v1.json", "dispatcher-due-dlq")
    assert route.max_payload_bytes > 0
    with pytest.raises(LookupError):
        handler.resolve_route("dispatcher-due", "select")


def test_a_get_is_not_a_message_and_is_neither_processed_nor_dead_lettered() -> None:
    # Health probes and browsers GET the function; only Pub/Sub's POSTs carry messages.
    from tests.unit.contracts.conftest import client
    from tests.unit.contracts.recorder import DEAD_LETTERS, USE_CASES

    response = client("http_fanout").get("/")
    assert response.status_code == 405
    assert USE_CASES.calls == [] and DEAD_LETTERS.published == []
