"""Hypothesis at every entry point, through functions-framework's test client in the push encoding.

For whatever arrives: no unhandled exception, no 5xx for a permanent error, every rejected message
published to its dead-letter topic with a reason, nothing silently acknowledged.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import contracts
from shared.envelope import parse_push_body
from shared.errors import PermanentError, SchemaValidationError, shorten
from tests.unit.contracts.conftest import (
    CE_TARGETS,
    TEST_MAX_PAYLOAD_BYTES,
    TOPIC_SCHEMAS,
    client,
    install_fakes,
    push_body,
)
from tests.unit.contracts.recorder import DEAD_LETTERS, USE_CASES

TARGETS = {
    **{t: topic for topic, t in CE_TARGETS.items()},
    "http_fanout": "dispatcher-due",
    "http_select": "dispatcher-ticks",
}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
contract_keys = st.sampled_from(
    [
        "subscription_id",
        "slot",
        "reason",
        "tick_id",
        "dry_run",
        "time",
        "shard",
        "job",
        "all",
        "older_than_days",
        "older_than_minutes",
        "limit",
        "x",
    ]
)
contract_shaped = st.dictionaries(contract_keys, json_values, max_size=5)
plausible = st.dictionaries(
    contract_keys,
    st.sampled_from(
        [
            "acme-news",
            "2026-01-05T09:00:00Z",
            "schedule",
            "manual",
            "expire",
            "reconcile",
            True,
            False,
            0,
            3,
            60,
            -1,
            "",
            None,
        ]
    ),
    max_size=4,
)
huge = st.builds(
    lambda key, text: json.dumps({key: text}).encode(),
    contract_keys,
    st.text(min_size=1000, max_size=6000),
)
non_utf8 = st.builds(
    lambda head, bad, tail: head + bad + tail,
    st.binary(max_size=20),
    st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80"]),
    st.binary(max_size=20),
)
as_bytes = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    contract_shaped.map(lambda v: json.dumps(v).encode()),
    plausible.map(lambda v: json.dumps(v).encode()),
    huge,
    non_utf8,
)
attributes = st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=5)


def _framework_accepts(body: Any) -> bool:
    """Whether functions-framework turns this body into a CloudEvent at all (its own rule)."""
    return (
        isinstance(body, dict)
        and "context" not in body
        and "subscription" in body
        and isinstance(body.get("message"), dict)
        and "data" in body["message"]
        and "messageId" in body["message"]
    )


def _check(target: str, body: Any, *, raw: bytes | None = None) -> None:
    """Post ``body`` and assert the invariants; ``raw`` is the message data when well-formed."""
    topic = TARGETS[target]
    install_fakes()
    response = client(target).post("/", data=json.dumps(body), content_type="application/json")
    status = response.status_code
    called, letters = list(USE_CASES.calls), list(DEAD_LETTERS.published)
    assert status < 500, f"5xx for a message nobody could process: {body!r:.300}"
    if status != 200:
        # Only functions-framework itself refuses (before user code): Pub/Sub redelivers that.
        assert target.startswith("ce_") and status == 400 and not _framework_accepts(body)
        assert not called and not letters
        return
    assert len(called) + len(letters) == 1, "acked without processing or dead-lettering"
    if called:
        _, payload, message = called[0]
        contracts.validate(TOPIC_SCHEMAS[topic][1], payload)
        if raw is not None:
            assert message.data == raw
        return
    [letter] = letters
    assert letter.topic == f"{topic}-dlq"
    assert letter.attributes["dlq_reason_class"]
    assert letter.attributes["dlq_reason"]
    assert letter.attributes["dlq_source_topic"] == topic
    assert all(len(v.encode("utf-8", "replace")) <= 1024 for v in letter.attributes.values())
    if letter.attributes["dlq_data"] == "message-data":
        if raw is not None:
            assert letter.data == raw, "the original bytes, unchanged"
        original = body["message"].get("attributes") or {}
        assert all(
            letter.attributes.get(k) == v for k, v in original.items() if not k.startswith("dlq_")
        )


@FUZZ
@given(target=st.sampled_from(sorted(TARGETS)), data=as_bytes, attrs=attributes)
def test_any_message_data(target: str, data: bytes, attrs: dict[str, str]) -> None:
    _check(target, push_body(data, attributes=attrs), raw=data)


@FUZZ
@given(
    target=st.sampled_from(sorted(TARGETS)),
    text=st.text(max_size=60) | st.from_regex(r"[A-Za-z0-9+/=_-]{0,40}", fullmatch=True),
)
def test_any_base64_field(target: str, text: str) -> None:
    body = push_body(b"{}")
    body["message"]["data"] = text
    _check(target, body)


envelope_keys = st.sampled_from(
    [
        "message.data",
        "message.messageId",
        "message.message_id",
        "message.attributes",
        "message.publishTime",
        "message.publish_time",
        "subscription",
        "deliveryAttempt",
        "message",
    ]
)


@FUZZ
@given(
    target=st.sampled_from(sorted(TARGETS)),
    removed=st.sets(envelope_keys, max_size=4),
    replaced=st.dictionaries(envelope_keys, json_values, max_size=2),
    data=as_bytes,
)
def test_missing_or_wrong_envelope_fields(
    target: str, removed: set[str], replaced: dict[str, Any], data: bytes
) -> None:
    body: dict[str, Any] = push_body(data, delivery_attempt=1)
    for key in removed:
        _path_delete(body, key)
    for key, value in replaced.items():
        _path_set(body, key, value)
    _check(target, body)


@FUZZ
@given(
    target=st.sampled_from(sorted(t for t in TARGETS if t.startswith("http_"))), body=json_values
)
def test_http_entry_point_any_json_body(target: str, body: Any) -> None:
    _check(target, body)


@FUZZ
@given(target=st.sampled_from(sorted(TARGETS)), data=as_bytes)
def test_dead_letter_outage_never_acks_a_rejected_message(target: str, data: bytes) -> None:
    install_fakes()
    DEAD_LETTERS.error = ConnectionError("pubsub down")
    response = client(target).post("/", json=push_body(data))
    if USE_CASES.calls:
        assert response.status_code == 200
        assert DEAD_LETTERS.attempts == 0
    else:
        assert DEAD_LETTERS.attempts == 1
        assert response.status_code >= 500, "rejected but not dead-lettered must not be acked"


def _path_delete(body: dict[str, Any], key: str) -> None:
    head, _, tail = key.partition(".")
    if not tail:
        body.pop(head, None)
    elif isinstance(body.get(head), dict):
        body[head].pop(tail, None)


def _path_set(body: dict[str, Any], key: str, value: Any) -> None:
    head, _, tail = key.partition(".")
    if not tail:
        body[head] = value
    elif isinstance(body.get(head), dict):
        body[head][tail] = value


def test_fuzz_strategies_reach_both_outcomes() -> None:
    # Guards the fuzz tests against vacuity: the inputs do reach the use case and the DLQ.
    _check(
        "ce_fanout",
        push_body(b'{"subscription_id": "acme-news"}'),
        raw=b'{"subscription_id": "acme-news"}',
    )
    assert USE_CASES.calls
    _check("ce_fanout", push_body(base64.b64decode("/w==")), raw=b"\xff")
    assert DEAD_LETTERS.published
    assert TEST_MAX_PAYLOAD_BYTES < 6000


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(contracts.CONTRACTS), payload=json_values | contract_shaped | plausible)
def test_contract_validation_never_crashes(name: str, payload: Any) -> None:
    contract = contracts.get_contract(name)
    issues = contract.issues(payload)
    for issue in issues:
        assert issue.path.startswith("$") and issue.rule and len(issue.value) <= 200
    try:
        contract.validate(payload)
    except SchemaValidationError as exc:
        assert issues and (exc.path, exc.rule) == (issues[0].path, issues[0].rule)
    else:
        assert not issues


@settings(max_examples=300, deadline=None)
@given(body=json_values | st.binary(max_size=100) | st.text(max_size=100))
def test_envelope_parsing_raises_only_permanent_errors(body: Any) -> None:
    try:
        message = parse_push_body(body)
    except PermanentError:
        return
    assert isinstance(message.data, bytes) and message.message_id


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=3000), limit=st.integers(min_value=0, max_value=1100))
def test_shorten_respects_the_byte_limit(text: str, limit: int) -> None:
    out = shorten(text, limit)
    assert len(out.encode("utf-8")) <= limit
