"""Subscription.from_document / to_document, clear errors for malformed documents, shard_for."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from shared.subscription import (
    CatchUp,
    CronSchedule,
    EverySchedule,
    InvalidSubscription,
    Source,
    Subscription,
    parse_instant,
    shard_for,
)


def full_document() -> dict[str, Any]:
    return {
        "name": "Acme brand mentions",
        "paused": False,
        "status": "active",
        "schedule": {"cron": "0 9 * * 1-5", "timezone": "Europe/London"},
        "starts_at": "2026-01-01T00:00:00Z",
        "ends_at": datetime(2026, 12, 31, 23, 59, tzinfo=UTC),
        "sources": [
            {"id": "rss-main", "kind": "rss", "params": {"url": "https://example.com/feed"}},
            {"id": "newsapi-acme", "kind": "news-api", "params": {"q": "acme"}},
        ],
        "catch_up": {"policy": "all", "window": 7200, "max_slots": 10},
        "jitter_seconds": 17,
        "next_run_at": "2026-01-05T09:00:00+00:00",
        "shard": 3,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-05T09:00:02.123456Z",
    }


def test_full_document_parses() -> None:
    sub = Subscription.from_document("acme-news", full_document())
    assert sub.id == "acme-news"
    assert sub.schedule == CronSchedule("0 9 * * 1-5", "Europe/London")
    assert sub.sources == (
        Source("rss-main", "rss", {"url": "https://example.com/feed"}),
        Source("newsapi-acme", "news-api", {"q": "acme"}),
    )
    assert sub.catch_up == CatchUp("all", 7200, 10)
    assert sub.starts_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert sub.ends_at == datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert sub.updated_at == datetime(2026, 1, 5, 9, 0, 2, 123456, tzinfo=UTC)
    assert (sub.jitter_seconds, sub.shard, sub.paused, sub.status) == (17, 3, False, "active")


def test_minimal_document_gets_defaults() -> None:
    sub = Subscription.from_document(
        "m",
        {"name": "m", "schedule": {"cron": "*/5 * * * *"}, "sources": [{"id": "a", "kind": "rss"}]},
    )
    assert sub.schedule == CronSchedule("*/5 * * * *", "UTC")
    assert sub.sources[0].params == {}
    assert (sub.paused, sub.status, sub.catch_up, sub.jitter_seconds) == (
        False,
        "active",
        None,
        None,
    )
    assert sub.effective_catch_up == CatchUp(policy="skip", window=3600, max_slots=60)
    assert sub.next_run_at is None and sub.shard is None


def test_catch_up_defaults_window_and_max_slots() -> None:
    doc = full_document()
    doc["catch_up"] = {"policy": "latest"}
    assert Subscription.from_document("a", doc).catch_up == CatchUp("latest", 3600, 60)


def test_round_trip_through_to_document() -> None:
    sub = Subscription.from_document("acme-news", full_document())
    again = Subscription.from_document("acme-news", sub.to_document())
    assert again == sub
    as_json = sub.to_document(json_compatible=True)
    assert as_json["updated_at"] == "2026-01-05T09:00:02.123456Z"
    assert as_json["ends_at"] == "2026-12-31T23:59:00Z"
    assert Subscription.from_document("acme-news", as_json) == sub
    stored = sub.to_document()
    assert stored["next_run_at"] == datetime(2026, 1, 5, 9, tzinfo=UTC)
    assert stored["schedule"] == {"cron": "0 9 * * 1-5", "timezone": "Europe/London"}


def test_to_document_writes_null_next_run_at_once_expired() -> None:
    doc = full_document()
    doc.update(status="expired", next_run_at=None)
    stored = Subscription.from_document("a", doc).to_document()
    assert stored["status"] == "expired"
    assert "next_run_at" in stored and stored["next_run_at"] is None


def test_every_schedule_document() -> None:
    doc = full_document()
    doc["schedule"] = {"every": 900}
    sub = Subscription.from_document("a", doc)
    assert sub.schedule == EverySchedule(900)
    assert sub.to_document()["schedule"] == {"every": 900}


def test_firestore_style_aware_datetimes_in_other_offsets_become_utc() -> None:
    doc = full_document()
    doc["starts_at"] = datetime(2026, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=1)))
    sub = Subscription.from_document("a", doc)
    assert sub.starts_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert sub.starts_at is not None and sub.starts_at.tzinfo is UTC


def test_parse_instant_forms() -> None:
    want = datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    for text in ["2026-03-08T07:00:00Z", "2026-03-08t07:00:00z", "2026-03-08 02:00:00-05:00",
                 "2026-03-08T08:00:00.000+01:00"]:  # fmt: skip
        assert parse_instant(text) == want, text


@pytest.mark.parametrize(
    ("mutate", "path", "fragment"),
    [
        (lambda d: d.pop("name"), "name", "missing"),
        (lambda d: d.update(name="   "), "name", "not blank"),
        (lambda d: d.update(paused="no"), "paused", "true or false"),
        (lambda d: d.update(status="deleted"), "status", "'active' or 'expired'"),
        (lambda d: d.update(schedule={"cron": "0 9 * *"}), "schedule.cron", "5 fields"),
        (lambda d: d.update(schedule={"cron": "0 9 * * * *"}), "schedule.cron", "5 fields"),
        (lambda d: d.update(schedule={"cron": "61 9 * * *"}), "schedule.cron", "invalid cron"),
        (lambda d: d.update(schedule={"cron": "0 0 30 2 *"}), "schedule.cron", "invalid cron"),
        (lambda d: d.update(schedule={"cron": 5}), "schedule.cron", "expected a string"),
        (lambda d: d["schedule"].update(timezone="Mars/Olympus"), "schedule.timezone", "IANA"),
        (lambda d: d["schedule"].update(timezone="../etc/passwd"), "schedule.timezone", "IANA"),
        (lambda d: d.update(schedule={"every": 90}), "schedule.every", "multiple of 60"),
        (lambda d: d.update(schedule={"every": 0}), "schedule.every", "between 60"),
        (lambda d: d.update(schedule={"every": True}), "schedule.every", "integer"),
        (lambda d: d.update(schedule={"every": "900"}), "schedule.every", "integer"),
        (lambda d: d.update(schedule={"every": 60, "cron": "* * * * *"}), "schedule", "not both"),
        (
            lambda d: d.update(schedule={"every": 60, "timezone": "UTC"}),
            "schedule.timezone",
            "unknown",
        ),
        (lambda d: d.update(schedule={}), "schedule", "needs 'cron'"),
        (lambda d: d.update(schedule="0 9 * * *"), "schedule", "expected an object"),
        (lambda d: d.update(starts_at="2026-01-01"), "starts_at", "RFC 3339"),
        (lambda d: d.update(starts_at="2026-01-01T00:00:00"), "starts_at", "offset"),
        (lambda d: d.update(starts_at=datetime(2026, 1, 1)), "starts_at", "timezone-aware"),
        (lambda d: d.update(starts_at=1767225600), "starts_at", "RFC 3339"),
        (lambda d: d.update(ends_at="2025-12-31T00:00:00Z"), "ends_at", "after starts_at"),
        (lambda d: d.update(sources=[]), "sources", "1 to 100"),
        (lambda d: d.update(sources={"id": "a"}), "sources", "expected a list"),
        (
            lambda d: d.update(sources=[{"id": "a", "kind": "rss"}] * 2),
            "sources[1].id",
            "duplicate",
        ),
        (lambda d: d["sources"][1].pop("kind"), "sources[1].kind", "missing"),
        (lambda d: d["sources"][1].update(id="Bad Id"), "sources[1].id", "a-z 0-9"),
        (lambda d: d["sources"][0].update(kind="RSS"), "sources[0].kind", "must match"),
        (lambda d: d["sources"][0].update(params=[1]), "sources[0].params", "expected an object"),
        (lambda d: d["sources"][0].update(url="x"), "sources[0].url", "unknown field"),
        (lambda d: d.update(sources=[{"id": "a", "kind": "rss"}] * 101), "sources", "1 to 100"),
        (lambda d: d.update(catch_up={"policy": "some"}), "catch_up.policy", "one of"),
        (lambda d: d.update(catch_up={"window": 60}), "catch_up.policy", "missing"),
        (
            lambda d: d.update(catch_up={"policy": "all", "window": 10}),
            "catch_up.window",
            "between",
        ),
        (
            lambda d: d.update(catch_up={"policy": "all", "max_slots": 0}),
            "catch_up.max_slots",
            "between",
        ),
        (lambda d: d.update(catch_up={"policy": "all", "windw": 60}), "catch_up.windw", "unknown"),
        (lambda d: d.update(jitter_seconds=60), "jitter_seconds", "between 0 and 59"),
        (lambda d: d.update(jitter_seconds=1.5), "jitter_seconds", "integer"),
        (lambda d: d.update(shard=-1), "shard", ">= 0"),
        (lambda d: d.update(next_run_at="soon"), "next_run_at", "RFC 3339"),
        (lambda d: d.update(catchup={"policy": "all"}), "catchup", "unknown field"),
    ],
)
def test_malformed_documents_name_the_field(mutate: Any, path: str, fragment: str) -> None:
    doc = copy.deepcopy(full_document())
    mutate(doc)
    with pytest.raises(InvalidSubscription) as info:
        Subscription.from_document("acme-news", doc)
    assert info.value.path == path
    assert fragment in info.value.problem
    assert str(info.value).startswith(f"{path}: ")
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("doc_id", ["", "Acme", "a/b", "-a", "a" * 101, "a b"])
def test_bad_document_ids(doc_id: str) -> None:
    with pytest.raises(InvalidSubscription) as info:
        Subscription.from_document(doc_id, full_document())
    assert info.value.path == "<id>"


def test_document_must_be_a_mapping() -> None:
    with pytest.raises(InvalidSubscription, match="expected an object"):
        Subscription.from_document("a", ["name"])  # type: ignore[arg-type]


def test_error_message_shows_the_offending_value() -> None:
    doc = full_document()
    doc["schedule"] = {"cron": "0 25 * * *", "timezone": "UTC"}
    with pytest.raises(InvalidSubscription) as info:
        Subscription.from_document("a", doc)
    assert "'0 25 * * *'" in str(info.value)
    assert info.value.value == "0 25 * * *"


def test_direct_construction_validates_too() -> None:
    with pytest.raises(InvalidSubscription):
        CronSchedule("not a cron")
    with pytest.raises(InvalidSubscription):
        CronSchedule("* * * * *", "Nowhere/Town")
    with pytest.raises(InvalidSubscription):
        EverySchedule(61)
    with pytest.raises(InvalidSubscription):
        CatchUp("never")  # type: ignore[arg-type]


def test_shard_for_is_stable_and_spreads() -> None:
    # Golden values (first 8 bytes of SHA-256, big-endian, mod 16): if they change, every stored
    # subscription's shard no longer matches the code.
    assert [shard_for(name, 16) for name in ("acme-news", "a", "digest")] == [13, 10, 14]
    counts = [0] * 16
    for i in range(16_000):
        counts[shard_for(f"sub-{i}", 16)] += 1
    assert min(counts) > 850 and max(counts) < 1150
    assert all(shard_for(f"x{i}", 1) == 0 for i in range(10))
    with pytest.raises(ValueError):
        shard_for("a", 0)
