"""Subscription admin rules: input validation, next_run_at on add/pause/resume/edit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.ops.subscriptions import (
    SubscriptionInputError,
    SubscriptionNotFound,
    build_document,
    next_runs,
    parse_text,
    recomputed_next_run,
    set_paused,
    validate_candidates,
    write_subscription,
)
from shared.subscription import Subscription, shard_for
from tests.unit.core.fakes import FakeSubscriptionStore

NOW = datetime(2026, 3, 7, 9, 0, 30, tzinfo=UTC)
KINDS = ["rss", "news-api"]


def raw(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "Acme",
        "schedule": {"cron": "0 9 * * *", "timezone": "America/New_York"},
        "sources": [{"id": "feed", "kind": "rss"}],
    }
    base.update(overrides)
    return base


def test_build_document_fills_system_fields() -> None:
    sub, doc = build_document("acme", raw(), now=NOW, shard_count=16, known_kinds=KINDS)
    # 09:00 New York on 2026-03-07 (EST, before the DST switch) is 14:00 UTC.
    assert doc["next_run_at"] == datetime(2026, 3, 7, 14, 0, tzinfo=UTC)
    assert doc["shard"] == shard_for("acme", 16)
    assert doc["status"] == "active"
    assert doc["paused"] is False
    assert doc["created_at"] == NOW and doc["updated_at"] == NOW
    assert doc["sources"] == [{"id": "feed", "kind": "rss", "params": {}}]
    assert sub.next_run_at == doc["next_run_at"]


@pytest.mark.parametrize(
    ("overrides", "path", "rule"),
    [
        ({"schedule": {"cron": "0 9 * *"}}, "$.schedule.cron", "format"),
        (
            {"schedule": {"cron": "0 9 * * *", "timezone": "Mars/Olympus"}},
            "$.schedule.timezone",
            "format",
        ),
        ({"sources": [{"id": "Feed", "kind": "rss"}]}, "$.sources[0].id", "pattern"),
        ({"sources": [{"id": "feed", "kind": "carrier-pigeon"}]}, "$.sources[0].kind", "queue"),
        ({"next_run_at": "2026-01-01T00:00:00Z"}, "$.next_run_at", "system-field"),
        ({"catchup": {"policy": "all"}}, "$", "additionalProperties"),
        ({"ends_at": "2026-01-01T00:00:00Z"}, "$.ends_at", "expired"),
    ],
)
def test_build_document_rejects_with_path_and_rule(
    overrides: dict[str, Any], path: str, rule: str
) -> None:
    with pytest.raises(SubscriptionInputError) as caught:
        build_document("acme", raw(**overrides), now=NOW, shard_count=16, known_kinds=KINDS)
    assert (caught.value.path, caught.value.rule) == (path, rule)


def test_parse_text_accepts_list_mapping_and_keyed_forms() -> None:
    listed = parse_text("- {id: a, name: A}\n- {id: b, name: B}\n", "f.yaml")
    keyed = parse_text("a: {name: A}\nb: {name: B}\n", "f.yaml")
    wrapped = parse_text('{"subscriptions": [{"id": "a", "name": "A"}]}', "f.json")
    assert [c.id for c in listed] == ["a", "b"]
    assert [c.id for c in keyed] == ["a", "b"]
    assert [c.id for c in wrapped] == ["a"]
    assert "id" not in listed[0].raw
    with pytest.raises(SubscriptionInputError, match="line 1"):
        parse_text("{name: [", "broken.yaml")


def test_validate_candidates_reports_every_problem_and_duplicates() -> None:
    candidates = parse_text(
        "- {id: a, name: A, schedule: {every: 60}, sources: [{id: s, kind: rss}]}\n"
        "- {id: a, name: A2, schedule: {every: 60}, sources: [{id: s, kind: rss}]}\n"
        "- {id: c, name: C, schedule: {every: 61}, sources: [{id: s, kind: rss}]}\n",
        "subs.yaml",
    )
    errors = validate_candidates(candidates, now=NOW, shard_count=4, known_kinds=KINDS)
    assert [(e.subscription_id, e.rule) for e in errors] == [("a", "unique"), ("c", "multipleOf")]


def test_pause_clears_next_run_and_resume_starts_from_now() -> None:
    store = FakeSubscriptionStore()
    hourly = raw(schedule={"every": 3600})
    write_subscription(store, "acme", hourly, now=lambda: NOW, shard_count=4, known_kinds=KINDS)
    assert store.docs["acme"]["next_run_at"] == datetime(2026, 3, 7, 10, tzinfo=UTC)

    paused = set_paused(store, "acme", True, now=lambda: NOW)
    assert paused.changed and store.docs["acme"]["next_run_at"] is None
    assert not set_paused(store, "acme", True, now=lambda: NOW).changed  # idempotent

    later = NOW + timedelta(hours=5, minutes=10)  # 14:10:30: 10:00 .. 14:00 passed while paused
    resumed = set_paused(store, "acme", False, now=lambda: later)
    assert resumed.changed and resumed.next_run_at == datetime(2026, 3, 7, 15, tzinfo=UTC)
    assert store.docs["acme"]["next_run_at"] == resumed.next_run_at
    assert store.docs["acme"]["paused"] is False
    with pytest.raises(SubscriptionNotFound):
        set_paused(store, "nope", True, now=lambda: NOW)


def test_resume_after_ends_at_expires() -> None:
    store = FakeSubscriptionStore()
    write_subscription(
        store,
        "acme",
        raw(schedule={"every": 3600}, ends_at="2026-03-07T12:00:00Z", paused=True),
        now=lambda: NOW,
        shard_count=4,
        known_kinds=KINDS,
    )
    result = set_paused(store, "acme", False, now=lambda: NOW + timedelta(hours=4))
    assert (result.status, result.next_run_at) == ("expired", None)
    assert store.docs["acme"]["status"] == "expired"


def test_replace_keeps_created_at_and_pending_slots() -> None:
    store = FakeSubscriptionStore()
    every = raw(schedule={"every": 900})
    write_subscription(store, "acme", every, now=lambda: NOW, shard_count=4, known_kinds=KINDS)
    created = store.docs["acme"]["created_at"]
    later = NOW + timedelta(hours=1)
    # The tick has not advanced next_run_at (09:15) yet: a schedule edit must not skip that gap.
    result = write_subscription(
        store,
        "acme",
        raw(schedule={"every": 1800}),
        now=lambda: later,
        shard_count=4,
        known_kinds=KINDS,
        replace=True,
    )
    assert result.action == "replaced"
    assert store.docs["acme"]["created_at"] == created
    assert store.docs["acme"]["next_run_at"] == datetime(2026, 3, 7, 9, 30, tzinfo=UTC)
    again = write_subscription(
        store,
        "acme",
        raw(schedule={"every": 1800}),
        now=lambda: later,
        shard_count=4,
        known_kinds=KINDS,
        replace=True,
    )
    assert again.action == "unchanged"
    exists = write_subscription(
        store, "acme", every, now=lambda: later, shard_count=4, known_kinds=KINDS
    )
    assert exists.action == "exists"


def test_recompute_is_idempotent_and_next_runs_are_local() -> None:
    sub, _ = build_document("acme", raw(), now=NOW, shard_count=4, known_kinds=KINDS)
    once = recomputed_next_run(sub, datetime(2026, 3, 1, 14, tzinfo=UTC), NOW)
    assert once == datetime(2026, 3, 1, 14, tzinfo=UTC)  # pending slot kept
    assert recomputed_next_run(sub, once, NOW + timedelta(minutes=1)) == once
    runs = next_runs(sub, NOW, 3)
    # The DST switch on 2026-03-08 moves 09:00 New York from 14:00 to 13:00 UTC.
    assert runs == [
        datetime(2026, 3, 7, 14, tzinfo=UTC),
        datetime(2026, 3, 8, 13, tzinfo=UTC),
        datetime(2026, 3, 9, 13, tzinfo=UTC),
    ]
    assert isinstance(Subscription.from_document("acme", {**_json(sub)}), Subscription)


def _json(sub: Subscription) -> dict[str, Any]:
    return sub.to_document(json_compatible=True)
