"""Five overlapping ticks and every due message delivered three more times, at 1,000 due.

Five ticks of the same minute are published at once (a scheduler that retried, replays, a late
one), so five select invocations read the same due documents concurrently; on top, every due
message of the minute is published three times by hand, as a redelivering Pub/Sub would. All
of it goes through the real push subscriptions. The oracle: one task and one ``created`` ledger
row per dispatch key, one run per (subscription, slot), every ``next_run_at`` advanced exactly
one slot, nothing dead-lettered.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import psycopg
import pytest

from tests.support.core import subscription_doc, utc
from tests.support.reliability import FaultStack, rfc3339

pytestmark = pytest.mark.reliability

DUE = 1000
TICKS = 5
DUPLICATES = 3
PREFIX = "overlap-"
SLOT = utc("2026-02-04T12:00")


def test_overlapping_ticks_and_duplicate_deliveries_dispatch_each_key_once(
    faults: FaultStack,
) -> None:
    docs = {
        f"{PREFIX}{i:04d}": subscription_doc(
            f"{PREFIX}{i:04d}",
            schedule={"every": 300},
            start=SLOT,
            shard_count=faults.settings.shard_count,
            jitter_seconds=0,
        )
        for i in range(DUE)
    }
    faults.seed(docs)
    ticks: list[tuple[bytes, dict[str, str]]] = [
        (json.dumps({"time": rfc3339(SLOT + timedelta(seconds=5 + 10 * i))}).encode(), {})
        for i in range(TICKS)
    ]
    due = [
        (
            json.dumps(
                {"subscription_id": sid, "slot": rfc3339(SLOT), "reason": "schedule"}
            ).encode(),
            {"duplicate": str(copy)},
        )
        for copy in range(DUPLICATES)
        for sid in docs
    ]
    began = time.monotonic()
    faults.publish("dispatcher-ticks", ticks)
    faults.publish("dispatcher-due", due)

    expected = {(sid, rfc3339(SLOT), "feed") for sid in docs}
    counts = faults.wait_collected(PREFIX, len(expected), timeout=240)
    keys = faults.wait_ledger_created(PREFIX, len(expected), timeout=30)
    elapsed = time.monotonic() - began
    with psycopg.connect(faults.env["DATABASE_URL"]) as conn:
        runs = conn.execute(
            "SELECT count(*), count(DISTINCT (subscription_id, slot)) FROM runs "
            "WHERE subscription_id LIKE %s",
            (PREFIX + "%",),
        ).fetchone()
    assert runs is not None
    next_runs = {
        snapshot.id: (snapshot.to_dict() or {}).get("next_run_at")
        for snapshot in faults.firestore.collection("subscriptions").stream()
        if snapshot.id.startswith(PREFIX)
    }
    letters = [m for m in faults.pull_dead_letters() if PREFIX.encode() in m.data]
    tick_letters = [m for m in faults.pull_dead_letters("dispatcher-ticks-dlq-sub")]
    duplicates = {k: n for k, n in counts.items() if n > 1}
    tick_lines = [
        line
        for line in faults.handle.log_lines("fn-select")
        if str(line.get("tick_time", "")).startswith(rfc3339(SLOT)[:16])
    ]
    selected = sum(int(line.get("published", 0)) for line in tick_lines)
    advanced = sum(1 for v in next_runs.values() if v == SLOT + timedelta(minutes=5))
    print(
        f"\noverlap: {DUE} due, {TICKS} overlapping ticks + {DUPLICATES} extra deliveries of "
        f"every due message; the {len(tick_lines)} select runs published {selected} due "
        f"messages, plus {DUPLICATES * DUE} by hand; "
        f"{len(counts)} keys collected from {sum(counts.values())} task requests, "
        f"{len(duplicates)} duplicated; {len(keys)} ledger rows; runs {runs[0]} "
        f"({runs[1]} distinct); next_run_at advanced one slot on {advanced}/{len(next_runs)}; "
        f"{len(letters)} due and {len(tick_letters)} tick dead letters; {elapsed:.1f}s"
    )
    assert set(counts) == expected
    assert duplicates == {}
    assert sorted(keys) == sorted(expected)
    assert runs == (DUE, DUE)
    assert advanced == DUE == len(next_runs)
    assert letters == [] and tick_letters == []
