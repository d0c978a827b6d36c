"""DST days, catch-up after downtime and read counts, end to end through select on the emulators.

Expected slots are listed by hand (UTC, with the local time in the comment), not computed.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from shared.ledger.repository import RunRow
from tests.integration.core.harness import Core
from tests.integration.core.test_core_acceptance import assert_exactly_once, minutes
from tests.support.core import subscription_doc, utc

FEED = [{"id": "feed", "kind": "rss", "params": {}}]


def keys(sid: str, *slots: str) -> set[tuple[str, str, str]]:
    return {(sid, f"{slot}:00Z", "feed") for slot in slots}


def test_new_york_spring_forward_daily_and_every_15_minutes(core: Core) -> None:
    start, end = utc("2026-03-08T05:40"), utc("2026-03-08T07:20")
    n = core.settings.shard_count
    docs = {
        # 02:30 does not exist on 2026-03-08: it runs once, right after the gap, at 03:00 EDT.
        "dst-ny-0230": subscription_doc(
            "dst-ny-0230",
            schedule={"cron": "30 2 * * *", "timezone": "America/New_York"},
            start=start,
            shard_count=n,
            sources=FEED,
        ),
        # 01:00 EST, an hour before the jump: unaffected.
        "dst-ny-0100": subscription_doc(
            "dst-ny-0100",
            schedule={"cron": "0 1 * * *", "timezone": "America/New_York"},
            start=start,
            shard_count=n,
            sources=FEED,
        ),
        # Elapsed time: 01:45 EST (06:45Z) is followed by 03:00 EDT (07:00Z).
        "dst-ny-q15": subscription_doc(
            "dst-ny-q15",
            schedule={"cron": "*/15 * * * *", "timezone": "America/New_York"},
            start=start,
            shard_count=n,
            sources=FEED,
        ),
    }
    core.seed(docs)
    core.run_ticks(minutes(start, end))
    expected = (
        keys("dst-ny-0230", "2026-03-08T07:00")  # 03:00 EDT
        | keys("dst-ny-0100", "2026-03-08T06:00")  # 01:00 EST
        | keys(
            "dst-ny-q15",
            "2026-03-08T05:45",  # 00:45 EST
            "2026-03-08T06:00",  # 01:00 EST
            "2026-03-08T06:15",  # 01:15 EST
            "2026-03-08T06:30",  # 01:30 EST
            "2026-03-08T06:45",  # 01:45 EST
            "2026-03-08T07:00",  # 03:00 EDT
            "2026-03-08T07:15",  # 03:15 EDT
        )
    )
    assert_exactly_once(core, "dst-ny-", expected)
    # The next daily 02:30 is a normal EDT day: 06:30Z on 2026-03-09.
    assert core.document("dst-ny-0230")["next_run_at"] == utc("2026-03-09T06:30")


def test_london_fall_back_daily_in_the_repeated_hour_and_every_15_minutes(core: Core) -> None:
    start, end = utc("2026-10-25T00:25"), utc("2026-10-25T01:50")
    n = core.settings.shard_count
    docs = {
        # 01:30 happens twice (BST, then GMT): a fixed-time job runs at the first one only.
        "dst-ldn-0130": subscription_doc(
            "dst-ldn-0130",
            schedule={"cron": "30 1 * * *", "timezone": "Europe/London"},
            start=start,
            shard_count=n,
            sources=FEED,
        ),
        # Elapsed time: every quarter of both 01:xx hours.
        "dst-ldn-q15": subscription_doc(
            "dst-ldn-q15",
            schedule={"cron": "*/15 * * * *", "timezone": "Europe/London"},
            start=start,
            shard_count=n,
            sources=FEED,
        ),
    }
    core.seed(docs)
    core.run_ticks(minutes(start, end))
    expected = keys("dst-ldn-0130", "2026-10-25T00:30") | keys(  # 01:30 BST
        "dst-ldn-q15",
        "2026-10-25T00:30",  # 01:30 BST
        "2026-10-25T00:45",  # 01:45 BST
        "2026-10-25T01:00",  # 01:00 GMT (second pass)
        "2026-10-25T01:15",  # 01:15 GMT
        "2026-10-25T01:30",  # 01:30 GMT
        "2026-10-25T01:45",  # 01:45 GMT
    )
    assert_exactly_once(core, "dst-ldn-", expected)
    assert core.document("dst-ldn-0130")["next_run_at"] == utc("2026-10-26T01:30")


def test_catch_up_after_90_minutes_of_missed_ticks_under_each_policy(core: Core) -> None:
    first = utc("2026-01-05T09:00")
    n = core.settings.shard_count

    def doc(sid: str, policy: str, max_slots: int = 60) -> dict[str, object]:
        return subscription_doc(
            sid,
            schedule={"every": 300},
            start=first,
            shard_count=n,
            sources=FEED,
            catch_up={"policy": policy, "window": 3600, "max_slots": max_slots},
        )

    docs = {
        "cu-skip": doc("cu-skip", "skip"),
        "cu-latest": doc("cu-latest", "latest"),
        "cu-all": doc("cu-all", "all"),
        "cu-all-cap3": doc("cu-all-cap3", "all", max_slots=3),
    }
    core.seed(docs)
    # On time at 09:00, then the dispatcher is down until 10:30 (ticks 09:01-10:29 lost).
    core.run_ticks([first + timedelta(seconds=4), utc("2026-01-05T10:30") + timedelta(seconds=4)])
    window = [f"2026-01-05T{h:02d}:{m:02d}" for h, m in [(9, 30), (9, 35), (9, 40), (9, 45)]]
    window += [f"2026-01-05T{h:02d}:{m:02d}" for h, m in [(9, 50), (9, 55), (10, 0), (10, 5)]]
    window += [f"2026-01-05T{h:02d}:{m:02d}" for h, m in [(10, 10), (10, 15), (10, 20)]]
    window += ["2026-01-05T10:25"]
    assert len(window) == 12  # 09:30 (= 10:30 - 1 h) to 10:25
    on_time = ("2026-01-05T09:00", "2026-01-05T10:30")
    expected = (
        keys("cu-skip", *on_time)
        | keys("cu-latest", *on_time, "2026-01-05T10:25")
        | keys("cu-all", *on_time, *window)
        | keys("cu-all-cap3", *on_time, "2026-01-05T10:15", "2026-01-05T10:20", "2026-01-05T10:25")
    )
    assert_exactly_once(core, "cu-", expected)
    reasons = {(r.subscription_id, r.slot, r.reason) for r in _runs(core, list(docs))}
    assert ("cu-latest", utc("2026-01-05T10:25"), "catch-up") in reasons
    assert ("cu-latest", utc("2026-01-05T10:30"), "schedule") in reasons
    assert {r for s, _, r in reasons if s == "cu-all"} == {"schedule", "catch-up"}


def _runs(core: Core, ids: list[str]) -> list[RunRow]:
    return [run for sid in ids for run in core.ledger.runs_for(sid, limit=100)]


def test_select_reads_only_due_documents_and_fanout_reads_none_for_scheduled_ones(
    core: Core,
) -> None:
    tick = utc("2026-01-05T09:00")
    n = core.settings.shard_count
    later = {"every": 3600}
    docs = {
        f"rc-{i:05d}": subscription_doc(
            f"rc-{i:05d}",
            schedule=later,
            start=tick + timedelta(minutes=1 + i % 50),  # not due at 09:00
            shard_count=n,
            sources=FEED,
            starts_at=tick + timedelta(minutes=1 + i % 50),
        )
        for i in range(9990)
    }
    # Ten due ones, and a paused one and an expired one that are also "due" by time alone.
    for i in range(10):
        docs[f"rc-due-{i}"] = subscription_doc(
            f"rc-due-{i}", schedule={"every": 300}, start=tick, shard_count=n, sources=FEED
        )
    docs["rc-paused"] = subscription_doc(
        "rc-paused", schedule={"every": 300}, start=tick, shard_count=n, paused=True
    )
    docs["rc-expired"] = {
        **subscription_doc("rc-expired", schedule={"every": 300}, start=tick, shard_count=n),
        "status": "expired",
    }
    began = time.monotonic()
    core.seed(docs)
    seeded = time.monotonic() - began
    core.store.reset()
    result = core.tick(tick)
    assert result.published == 10
    assert core.store.query_reads == 10, "select read more than the due documents"
    # One query per shard; every shard's page was short, so no second page was asked for.
    assert core.store.queries == n
    messages = core.pull_due(10)
    core.store.reset()
    results = core.fan_out(messages)
    # One Firestore read per due subscription in all: select's. fanout uses the snapshot the
    # scheduled messages carry...
    assert core.store.gets == 0 and core.store.query_reads == 0
    assert {r.subscription_read for r in results} == {"snapshot"}
    assert_exactly_once(core, "rc-", keys_for_due(tick))
    # ...and reads the document for a replay (nothing more is dispatched).
    core.store.reset()
    replays = core.fan_out(
        [({**payload, "reason": "replay"}, f"{mid}-r") for payload, mid in messages]
    )
    assert core.store.gets == 10
    assert {r.subscription_read for r in replays} == {"firestore"}
    assert_exactly_once(core, "rc-", keys_for_due(tick))
    print(f"\nseeded {len(docs)} documents in {seeded:.1f}s")


def keys_for_due(tick: datetime) -> set[tuple[str, str, str]]:
    slot = tick.strftime("%Y-%m-%dT%H:%M")
    return set().union(*(keys(f"rc-due-{i}", slot) for i in range(10)))
