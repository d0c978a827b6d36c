"""Deliveries declared on a subscription: parsed, stored back unchanged, refused with a path."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from shared.ops.subscriptions import (
    SubscriptionInputError,
    build_document,
    parse_text,
    validate_candidates,
)
from shared.subscription import AfterRun, CronSchedule, Delivery, Subscription

NOW = datetime(2026, 3, 7, 9, 0, 30, tzinfo=UTC)
KINDS = ["rss"]


def raw(*deliveries: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "Acme",
        "schedule": {"every": 3600},
        "sources": [{"id": "feed", "kind": "rss"}],
        "deliveries": list(deliveries),
    }


def delivery(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "digest",
        "channel": "email",
        "to": ["pr@acme.example"],
        "schedule": {"cron": "0 8 * * 1-5", "timezone": "America/New_York"},
        "format": "digest",
    }
    base.update(overrides)
    return base


def test_both_kinds_of_delivery_parse_and_round_trip() -> None:
    sub, doc = build_document(
        "acme",
        raw(
            delivery(),
            delivery(
                id="alert",
                to=["a@x.example", "b@x.example"],
                schedule={"after": "run"},
                format="alert",
            ),
        ),
        now=NOW,
        shard_count=4,
        known_kinds=KINDS,
    )
    digest, alert = sub.deliveries
    assert digest == Delivery(
        "digest", ("pr@acme.example",), CronSchedule("0 8 * * 1-5", "America/New_York"), "digest"
    )
    assert alert.after_run and not digest.after_run
    assert alert.schedule == AfterRun()
    assert alert.to == ("a@x.example", "b@x.example")
    assert sub.delivery("alert") is alert and sub.delivery("nope") is None
    assert Subscription.from_document("acme", doc) == sub
    assert doc["deliveries"][1] == {
        "id": "alert",
        "channel": "email",
        "to": ["a@x.example", "b@x.example"],
        "schedule": {"after": "run"},
        "format": "alert",
    }


def test_a_subscription_without_deliveries_stores_none() -> None:
    body = raw()
    del body["deliveries"]
    sub, doc = build_document("acme", body, now=NOW, shard_count=4, known_kinds=KINDS)
    assert sub.deliveries == () and "deliveries" not in doc


@pytest.mark.parametrize(
    ("bad", "path", "rule", "says"),
    [
        (
            delivery(to=["Bob <bob@x.example>"]),
            "$.deliveries[0].to[0]",
            "format",
            "not a bare email address",
        ),
        (
            delivery(to=["a@x.example\nBcc: everyone@x.example"]),
            "$.deliveries[0].to[0]",
            "format",
            "not a bare email address",
        ),
        (delivery(to=[]), "$.deliveries[0].to", "minItems", ""),
        (
            delivery(to=["a@x.example", "A@X.example"]),
            "$.deliveries[0].to[1]",
            "x-consistency",
            "duplicate recipient",
        ),
        (delivery(schedule={"cron": "0 8 * * 1-5"}), "$.deliveries[0].schedule", "required", ""),
        (
            delivery(schedule={"cron": "0 8 * * 1-5", "timezone": "America/Gotham"}),
            "$.deliveries[0].schedule.timezone",
            "format",
            "",
        ),
        (delivery(schedule={"after": "tick"}), "$.deliveries[0].schedule.after", "enum", ""),
        (delivery(format="weekly"), "$.deliveries[0].format", "enum", ""),
        (delivery(channel="sms"), "$.deliveries[0].channel", "enum", ""),
        (delivery(id="Digest"), "$.deliveries[0].id", "pattern", ""),
        (delivery(subject="hi"), "$.deliveries[0]", "additionalProperties", "subject"),
    ],
)
def test_invalid_declarations_are_refused_with_path_and_reason(
    bad: dict[str, Any], path: str, rule: str, says: str
) -> None:
    with pytest.raises(SubscriptionInputError) as caught:
        build_document("acme", raw(bad), now=NOW, shard_count=4, known_kinds=KINDS)
    assert (caught.value.path, caught.value.rule) == (path, rule)
    assert says in caught.value.problem
    assert path in str(caught.value) and "'acme'" in str(caught.value)


def test_duplicate_delivery_ids_are_refused_on_the_second() -> None:
    with pytest.raises(SubscriptionInputError) as caught:
        build_document(
            "acme",
            raw(delivery(), delivery(format="alert")),
            now=NOW,
            shard_count=4,
            known_kinds=KINDS,
        )
    assert (caught.value.path, caught.value.rule) == ("$.deliveries[1].id", "x-consistency")
    assert "duplicate delivery id" in caught.value.problem


def test_import_file_reports_the_delivery_problem_with_file_and_id() -> None:
    # What `dispatcher subscriptions import|validate` runs on a file before writing anything.
    candidates = parse_text(
        "- id: good\n"
        "  name: Good\n"
        "  schedule: {every: 3600}\n"
        "  sources: [{id: s, kind: rss}]\n"
        "  deliveries: [{id: d, channel: email, to: [a@x.example], schedule: {after: run},"
        " format: alert}]\n"
        "- id: bad\n"
        "  name: Bad\n"
        "  schedule: {every: 3600}\n"
        "  sources: [{id: s, kind: rss}]\n"
        "  deliveries: [{id: d, channel: email, to: [not-an-address], schedule: {after: run},"
        " format: alert}]\n",
        "subs.yaml",
    )
    errors = validate_candidates(candidates, now=NOW, shard_count=4, known_kinds=KINDS)
    assert [(e.subscription_id, e.path, e.rule) for e in errors] == [
        ("bad", "$.deliveries[0].to[0]", "format")
    ]
    assert str(errors[0]).startswith("subs.yaml[1] 'bad': $.deliveries[0].to[0]:")
    assert "not a bare email address" in str(errors[0])
