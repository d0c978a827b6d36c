"""Acceptance of the scheduling core on the real stack: exactly one task per dispatch key.

select and fanout run in-process with explicit tick times against the Firestore, Pub/Sub and
Cloud Tasks emulators and PostgreSQL; due messages travel through the real ``dispatcher-due``
topic; the Cloud Tasks emulator delivers the tasks to the collector stub. The collector's
records and the ledger are the oracle.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from tests.integration.core.harness import Core, Key
from tests.support.core import expected_slots, subscription_doc, utc

KINDS = ("rss", "news-api", "social")


def _rfc3339(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def minutes(start: datetime, end: datetime, second: int = 7) -> list[datetime]:
    """A tick every minute from ``start`` to ``end`` inclusive, ``second`` s into the minute."""
    count = int((end - start).total_seconds() // 60) + 1
    return [start + timedelta(minutes=m, seconds=second) for m in range(count)]


def sources(i: int) -> list[dict[str, Any]]:
    return [
        {"id": f"src-{n}", "kind": KINDS[(i + n) % len(KINDS)], "params": {"n": n}}
        for n in range(1 + i % 3)
    ]


def mixed_schedule(i: int, start: datetime) -> dict[str, Any]:
    """Ten kinds of subscription, by ``i % 10``."""
    variants: list[dict[str, Any]] = [
        {"schedule": {"every": 900}},
        {"schedule": {"every": 1800}},
        {"schedule": {"cron": "0 * * * *", "timezone": "UTC"}},
        {"schedule": {"cron": "*/20 * * * *", "timezone": "Europe/London"}},
        {"schedule": {"cron": "30 4 * * *", "timezone": "America/New_York"}},
        {"schedule": {"every": 600}, "starts_at": start + timedelta(minutes=63)},
        {"schedule": {"cron": "*/10 8-9 * * *", "timezone": "UTC"}},
        {"schedule": {"every": 1200}, "ends_at": start + timedelta(minutes=90)},
        {"schedule": {"every": 300}, "paused": True},
        {"schedule": {"cron": "5,35 * * * 1", "timezone": "UTC"}, "jitter_seconds": 0},
    ]
    return variants[i % 10]


def expected_keys(docs: dict[str, dict[str, Any]], start: datetime, end: datetime) -> set[Key]:
    keys: set[Key] = set()
    for sid, doc in docs.items():
        if doc["paused"]:
            continue
        for slot in expected_slots(sid, doc, start, end):
            keys.update((sid, _rfc3339(slot), s["id"]) for s in doc["sources"])
    return keys


def assert_exactly_once(core: Core, prefix: str, expected: set[Key]) -> None:
    collected = core.collected(prefix, len(expected))
    duplicates = [k for k, n in Counter(collected).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} keys collected more than once: {duplicates[:5]}"
    missing, extra = sorted(expected - set(collected)), sorted(set(collected) - expected)
    assert set(collected) == expected, f"missing {missing[:5]}, extra {extra[:5]}"
    rows = core.ledger_rows(prefix)
    assert Counter(k for k, _ in rows) == Counter(expected)
    assert {state for _, state in rows} == {"created"}


def test_200_subscriptions_through_three_hours_of_ticks_dispatch_each_key_once(
    core: Core,
) -> None:
    start, end = utc("2026-01-05T08:00"), utc("2026-01-05T10:59")
    docs = {
        f"sim-{i:03d}": subscription_doc(
            f"sim-{i:03d}",
            start=start,
            shard_count=core.settings.shard_count,
            sources=sources(i),
            **mixed_schedule(i, start),
        )
        for i in range(200)
    }
    core.seed(docs)
    expected = expected_keys(docs, start, end)
    began = time.monotonic()
    due = core.run_ticks(minutes(start, end))
    elapsed = time.monotonic() - began
    assert due == len({(k[0], k[1]) for k in expected})
    assert_exactly_once(core, "sim-", expected)
    # Subscriptions past ends_at were marked expired; paused ones were never read as due.
    expired = [sid for sid, d in docs.items() if "ends_at" in d]
    assert {core.document(sid)["status"] for sid in expired} == {"expired"}
    paused = next(sid for sid, d in docs.items() if d["paused"])
    assert core.document(paused)["next_run_at"] == docs[paused]["next_run_at"]
    print(f"\n3 simulated hours: {len(expected)} tasks, {due} due messages in {elapsed:.1f}s")
    print(f"time spent: {core.timings}")


def test_overlapping_ticks_and_triplicate_due_messages_still_dispatch_once(core: Core) -> None:
    slot = utc("2026-01-05T09:00")
    docs = {
        f"dup-{i:02d}": subscription_doc(
            f"dup-{i:02d}",
            schedule={"every": 300},
            start=slot,
            shard_count=core.settings.shard_count,
            sources=sources(i),
        )
        for i in range(40)
    }
    core.seed(docs)
    # Five ticks for the same minute, at once (the scheduler retried, an operator replayed...).
    barrier = threading.Barrier(5)
    results = []

    def overlapping(n: int) -> None:
        barrier.wait()
        results.append(core.tick(slot + timedelta(seconds=n * 7), message_id=f"tick-{n}"))

    threads = [threading.Thread(target=overlapping, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    published = sum(r.published for r in results)
    assert published >= len(docs)  # at least once each; overlaps may publish duplicates
    messages = core.pull_due(published)
    # ...and every due message delivered three times, concurrently.
    core.fan_out(messages, deliveries=3)
    expected = expected_keys(docs, slot, slot)
    assert len(expected) == sum(len(d["sources"]) for d in docs.values())
    assert_exactly_once(core, "dup-", expected)
    assert {core.document(sid)["next_run_at"] for sid in docs} == {slot + timedelta(minutes=5)}


def test_a_replayed_missed_minute_dispatches_what_was_missed_and_nothing_twice(
    core: Core,
) -> None:
    start = utc("2026-01-05T09:00")
    docs = {
        f"rep-{i}": subscription_doc(
            f"rep-{i}",
            schedule={"every": 60},
            start=start,
            shard_count=core.settings.shard_count,
            catch_up={"policy": "skip"},
        )
        for i in range(3)
    }
    core.seed(docs)
    core.run_ticks([start, start + timedelta(minutes=1)])
    # The 09:02 tick is lost; its replay (explicit time) comes before the 09:03 tick.
    missed = start + timedelta(minutes=2, seconds=1)
    core.run_ticks([missed, missed, start + timedelta(minutes=3)])
    # Replaying the same minute again, and older ones, changes nothing.
    assert core.run_ticks([missed, start, start + timedelta(minutes=1)]) == 0
    expected = expected_keys(docs, start, start + timedelta(minutes=3))
    assert len(expected) == 12
    assert_exactly_once(core, "rep-", expected)


def test_dry_run_ticks_publish_and_write_nothing(core: Core) -> None:
    slot = utc("2026-01-05T09:00")
    docs = {
        "dry-1": subscription_doc(
            "dry-1", schedule={"every": 300}, start=slot, shard_count=core.settings.shard_count
        )
    }
    core.seed(docs)
    before = core.document("dry-1")
    result = core.tick(slot, dry_run=True)
    assert [m["subscription_id"] for m in result.messages] == ["dry-1"]
    assert result.published == 1 and result.advanced == 0
    assert core.document("dry-1") == before
    core.drain_due()
    assert core.run_ticks([slot]) == 1  # the real tick still finds it due
