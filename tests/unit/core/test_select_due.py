"""select_due against in-memory fakes: what is published, what is advanced, and in which order."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.config import Settings, load_settings
from shared.errors import InvalidRequestError, RetryableError
from shared.usecases.select_due import SelectDependencies, TickTooFarAheadError, select_due
from tests.support.core import subscription_doc, utc

from .fakes import FakePublisher, FakeSubscriptionStore, message

SHARDS = 4


@pytest.fixture
def settings() -> Settings:
    return load_settings(environ={}, shard_count=SHARDS, firestore_page_size=2)


@pytest.fixture
def store() -> FakeSubscriptionStore:
    return FakeSubscriptionStore()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def deps(
    settings: Settings, store: FakeSubscriptionStore, publisher: FakePublisher
) -> SelectDependencies:
    return SelectDependencies(
        settings=settings,
        store=store,
        publisher=publisher,
        clock=lambda: utc("2030-01-01T00:00"),
    )


def add(store: FakeSubscriptionStore, sid: str, start: datetime, **fields: Any) -> None:
    schedule = fields.pop("schedule", {"every": 300})
    store.put(
        sid, subscription_doc(sid, schedule=schedule, start=start, shard_count=SHARDS, **fields)
    )


def published(publisher: FakePublisher) -> list[tuple[str, str, str]]:
    out = []
    for m in publisher.messages:
        body = json.loads(m.data)
        assert m.attributes == {"subscription_id": body["subscription_id"], "slot": body["slot"]}
        out.append((body["subscription_id"], body["slot"], body["reason"]))
    return sorted(out)


def tick(deps: SelectDependencies, at: str, **payload: object) -> None:
    select_due({"time": at, **payload}, message("tick-1"), deps=deps)


def test_a_due_subscription_gets_one_message_and_its_next_run_advances(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2026-01-05T09:00"))
    tick(deps, "2026-01-05T09:00:00Z")
    assert published(publisher) == [("acme", "2026-01-05T09:00:00Z", "schedule")]
    body = json.loads(publisher.messages[0].data)
    assert body["tick_id"] == "tick-1"
    assert store.docs["acme"]["next_run_at"] == utc("2026-01-05T09:05")


def test_ticks_before_the_slot_publish_nothing_and_change_nothing(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2026-01-05T09:05"))
    version = store.versions["acme"]
    for minute in range(5):
        tick(deps, f"2026-01-05T09:0{minute}:00Z")
    assert publisher.messages == []
    assert store.versions["acme"] == version


def test_a_replayed_tick_publishes_nothing_twice(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2026-01-05T09:00"))
    for _ in range(3):
        tick(deps, "2026-01-05T09:00:00Z")
        tick(deps, "2026-01-05T09:00:30Z")
    assert published(publisher) == [("acme", "2026-01-05T09:00:00Z", "schedule")]


def test_the_tick_time_defaults_to_the_publish_time(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2026-01-05T09:00"))
    select_due({}, message("t", publish_time=utc("2026-01-05T08:59")), deps=deps)
    assert publisher.messages == []
    select_due(
        {}, message("t", publish_time=utc("2026-01-05T09:00") + timedelta(seconds=2)), deps=deps
    )
    assert published(publisher) == [("acme", "2026-01-05T09:00:00Z", "schedule")]


def test_a_failed_publish_advances_nothing_and_the_retry_publishes_it(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2026-01-05T09:00"))
    publisher.fail = True
    with pytest.raises(RetryableError):
        tick(deps, "2026-01-05T09:00:00Z")
    assert store.docs["acme"]["next_run_at"] == utc("2026-01-05T09:00")
    publisher.fail = False
    tick(deps, "2026-01-05T09:00:00Z")
    assert published(publisher) == [("acme", "2026-01-05T09:00:00Z", "schedule")]
    assert store.docs["acme"]["next_run_at"] == utc("2026-01-05T09:05")


def test_a_document_changed_after_the_read_is_not_overwritten(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2026-01-05T09:00"))
    edited = utc("2026-01-05T12:00")

    def operator_edits(page: list[object]) -> None:
        store.on_read = None
        data = dict(store.docs["acme"], next_run_at=edited)
        store.put("acme", data)

    store.on_read = operator_edits
    result = select_due({"time": "2026-01-05T09:00:00Z"}, message(), deps=deps)
    assert result.conflicts == 1 and result.advanced == 0
    assert store.docs["acme"]["next_run_at"] == edited
    assert published(publisher) == [("acme", "2026-01-05T09:00:00Z", "schedule")]


def test_dry_run_publishes_and_writes_nothing(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2026-01-05T09:00"))
    version = store.versions["acme"]
    result = select_due({"time": "2026-01-05T09:00:00Z", "dry_run": True}, message(), deps=deps)
    assert [m["subscription_id"] for m in result.messages] == ["acme"]
    assert publisher.messages == []
    assert store.versions["acme"] == version


def test_pages_cover_every_due_document_once(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    ids = [f"sub-{i:02d}" for i in range(23)]
    for sid in ids:
        add(store, sid, utc("2026-01-05T09:00"))
    result = select_due({"time": "2026-01-05T09:00:00Z"}, message(), deps=deps)
    assert sorted(s for s, _, _ in published(publisher)) == ids
    assert result.read == 23 and result.advanced == 23
    # page size 2: every shard needed more than one page; each page was published separately.
    assert len(publisher.batches) > SHARDS


def test_paused_expired_and_invalid_documents_are_not_published(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    start = utc("2026-01-05T09:00")
    add(store, "ok", start)
    add(store, "paused", start, paused=True)
    add(store, "broken", start)
    store.docs["broken"]["schedule"] = {"every": 61}
    result = select_due({"time": "2026-01-05T09:00:00Z"}, message(), deps=deps)
    assert published(publisher) == [("ok", "2026-01-05T09:00:00Z", "schedule")]
    assert result.invalid == 1


def test_the_last_slot_before_ends_at_is_published_then_the_subscription_expires(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "ending", utc("2026-01-05T09:00"), ends_at=utc("2026-01-05T09:05"))
    result = select_due({"time": "2026-01-05T09:00:00Z"}, message(), deps=deps)
    assert published(publisher) == [("ending", "2026-01-05T09:00:00Z", "schedule")]
    assert result.expired == 1
    assert store.docs["ending"]["status"] == "expired"
    assert store.docs["ending"]["next_run_at"] is None
    tick(deps, "2026-01-05T10:00:00Z")
    assert len(publisher.messages) == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("skip", ["10:30:00Z:schedule"]),
        ("latest", ["10:25:00Z:catch-up", "10:30:00Z:schedule"]),
        (
            "all",
            [
                f"{m}:catch-up"
                for m in (
                    "09:30:00Z",
                    "09:35:00Z",
                    "09:40:00Z",
                    "09:45:00Z",
                    "09:50:00Z",
                    "09:55:00Z",
                    "10:00:00Z",
                    "10:05:00Z",
                    "10:10:00Z",
                    "10:15:00Z",
                    "10:20:00Z",
                    "10:25:00Z",
                )
            ]
            + ["10:30:00Z:schedule"],
        ),
    ],
)
def test_catch_up_after_90_minutes_without_ticks(
    deps: SelectDependencies,
    store: FakeSubscriptionStore,
    publisher: FakePublisher,
    policy: str,
    expected: list[str],
) -> None:
    # Last tick 09:00; the next arrives at 10:30. Window one hour: 09:30 is the oldest allowed.
    add(
        store,
        "acme",
        utc("2026-01-05T09:05"),
        catch_up={"policy": policy, "window": 3600, "max_slots": 60},
    )
    tick(deps, "2026-01-05T10:30:00Z")
    got = [f"{slot[11:]}:{reason}" for _, slot, reason in published(publisher)]
    assert got == expected


def test_a_shard_outside_the_configured_count_is_a_permanent_error(
    deps: SelectDependencies,
) -> None:
    with pytest.raises(InvalidRequestError):
        select_due({"shard": SHARDS}, message(), deps=deps)


def test_a_single_shard_tick_reads_only_that_shard(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    for i in range(12):
        add(store, f"sub-{i}", utc("2026-01-05T09:00"))
    shard = store.docs["sub-0"]["shard"]
    select_due({"time": "2026-01-05T09:00:00Z", "shard": shard}, message(), deps=deps)
    expected = sorted(s for s, d in store.docs.items() if d["shard"] == shard)
    assert sorted(s for s, _, _ in published(publisher)) == expected
    assert all(
        d["next_run_at"] == utc("2026-01-05T09:00")
        for d in store.docs.values()
        if d["shard"] != shard
    )


def test_datetimes_in_messages_are_utc_rfc3339(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(
        store,
        "ny",
        utc("2026-03-08T07:00"),
        schedule={"cron": "0 3 * * *", "timezone": "America/New_York"},
    )
    tick(deps, "2026-03-08T03:00:00-04:00")
    assert published(publisher) == [("ny", "2026-03-08T07:00:00Z", "schedule")]
    assert store.docs["ny"]["next_run_at"] == datetime(2026, 3, 9, 7, 0, tzinfo=UTC)


def test_every_decision_is_logged_with_its_subscription(
    deps: SelectDependencies,
    store: FakeSubscriptionStore,
    publisher: FakePublisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every extra field is built into a record
    add(store, "acme", utc("2026-01-05T09:00"))
    add(store, "ending", utc("2026-01-05T09:00"), ends_at=utc("2026-01-05T09:05"))
    add(store, "broken", utc("2026-01-05T09:00"))
    store.docs["broken"]["schedule"] = {"every": 61}
    tick(deps, "2026-01-05T09:00:00Z")
    decisions = {
        (r.__dict__["subscription_id"], r.__dict__["decision"])
        for r in caplog.records
        if hasattr(r, "subscription_id")
    }
    assert decisions == {
        ("acme", "publish"),
        ("ending", "publish"),
        ("ending", "expired"),
        ("broken", "invalid"),
    }


def test_each_page_is_advanced_with_one_store_call(
    deps: SelectDependencies, store: FakeSubscriptionStore
) -> None:
    ids = [f"sub-{i:02d}" for i in range(23)]
    for sid in ids:
        add(store, sid, utc("2026-01-05T09:00"))
    select_due({"time": "2026-01-05T09:00:00Z"}, message(), deps=deps)
    # page size 2: one call per page, never a call per document or across pages.
    assert all(1 <= len(call) <= 2 for call in store.advance_calls)
    assert sorted(sid for call in store.advance_calls for sid in call) == ids
    assert len(store.advance_calls) < len(ids)


def test_a_conflict_in_a_page_is_logged_alone_and_the_rest_advance(
    deps: SelectDependencies, store: FakeSubscriptionStore, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [f"sub-{i:02d}" for i in range(6)]
    for sid in ids:
        add(store, sid, utc("2026-01-05T09:00"))
    edited = utc("2026-01-05T12:00")

    def operator_edits(page: list[object]) -> None:
        if "sub-03" in store.docs and store.docs["sub-03"]["next_run_at"] != edited:
            store.put("sub-03", dict(store.docs["sub-03"], next_run_at=edited))

    store.on_read = operator_edits
    with caplog.at_level(logging.INFO, logger="shared.usecases.select_due"):
        result = select_due({"time": "2026-01-05T09:00:00Z"}, message(), deps=deps)
    assert result.conflicts == 1 and result.advanced == 5
    conflicts = [r for r in caplog.records if getattr(r, "decision", None) == "conflict"]
    assert [getattr(r, "subscription_id", None) for r in conflicts] == ["sub-03"]
    assert store.docs["sub-03"]["next_run_at"] == edited
    assert all(
        store.docs[s]["next_run_at"] == utc("2026-01-05T09:05") for s in ids if s != "sub-03"
    )


def test_a_failed_advance_fails_the_tick_after_the_other_shards_finished(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    ids = [f"sub-{i:02d}" for i in range(12)]
    for sid in ids:
        add(store, sid, utc("2026-01-05T09:00"))
    shards = {sid: store.docs[sid]["shard"] for sid in ids}
    broken = "sub-00"
    store.fail_advance = {broken}
    with pytest.raises(RetryableError, match="injected advance failure"):
        tick(deps, "2026-01-05T09:00:00Z")
    # The failing shard stopped at that page; every other shard went all the way.
    assert store.docs[broken]["next_run_at"] == utc("2026-01-05T09:00")
    others = [s for s in ids if shards[s] != shards[broken]]
    assert others, "the ids must span more than one shard"
    assert all(store.docs[s]["next_run_at"] == utc("2026-01-05T09:05") for s in others)
    # The redelivered tick publishes what was not advanced again and finishes the job.
    store.fail_advance = set()
    tick(deps, "2026-01-05T09:00:00Z")
    assert store.docs[broken]["next_run_at"] == utc("2026-01-05T09:05")
    assert [s for s, _, _ in published(publisher)].count(broken) == 2
    assert all(store.docs[s]["next_run_at"] == utc("2026-01-05T09:05") for s in ids), (
        "nothing may be left behind after the retry"
    )


def test_a_tick_a_year_ahead_is_permanent_and_reads_publishes_and_moves_nothing(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2029-12-31T23:00"))
    before = dict(store.docs["acme"])
    with pytest.raises(TickTooFarAheadError) as caught:
        tick(deps, "2031-01-01T00:00:00Z")
    assert caught.value.details() == {
        "path": "$.time",
        "rule": "max_tick_skew_seconds",
        "value": "2031-01-01T00:00:00Z",
    }
    assert "365d" in caught.value.message and "skip every slot" in caught.value.message
    assert store.queries == 0 and publisher.messages == []
    assert store.docs["acme"] == before


def test_a_tick_within_the_skew_is_processed_and_one_beyond_it_is_not(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    # The clock says 2030-01-01T00:00; the default skew is 300 s.
    add(store, "acme", utc("2030-01-01T00:05"))
    tick(deps, "2030-01-01T00:05:00Z")
    assert published(publisher) == [("acme", "2030-01-01T00:05:00Z", "schedule")]
    with pytest.raises(TickTooFarAheadError):
        tick(deps, "2030-01-01T00:05:01Z")


def test_the_skew_is_configurable_and_a_dry_run_may_look_ahead(
    settings: Settings, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    add(store, "acme", utc("2030-01-01T02:00"))
    deps = SelectDependencies(
        settings=replace(settings, max_tick_skew_seconds=7200),
        store=store,
        publisher=publisher,
        clock=lambda: utc("2030-01-01T00:00"),
    )
    tick(deps, "2030-01-01T02:00:00Z")
    assert len(publisher.messages) == 1
    tick(deps, "2031-01-01T00:00:00Z", dry_run=True)  # logs only: nothing to protect
    assert len(publisher.messages) == 1
    with pytest.raises(TickTooFarAheadError):
        tick(deps, "2030-01-01T02:00:01Z")


def test_the_publish_time_is_not_checked(
    deps: SelectDependencies, store: FakeSubscriptionStore, publisher: FakePublisher
) -> None:
    # Pub/Sub stamps it, nobody types it; a function clock behind Pub/Sub's must not stop ticks.
    add(store, "acme", utc("2030-01-01T00:10"))
    select_due({}, message("t", publish_time=utc("2030-01-01T00:10")), deps=deps)
    assert published(publisher) == [("acme", "2030-01-01T00:10:00Z", "schedule")]
