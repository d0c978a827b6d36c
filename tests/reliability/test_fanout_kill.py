"""kill -9 of the fanout function while it fans out 1,000 due subscriptions.

A tick goes through the real push path (dispatcher-ticks → select → dispatcher-due → fanout);
once a few hundred dispatch keys are in the ledger, fanout's whole process group gets SIGKILL
(in-flight pushes die mid-request, some after claiming or creating their task and before the
ledger says ``created``), then it is restarted on the same port.

Redelivery: production Pub/Sub redelivers every unacknowledged message. The Pub/Sub emulator
does not always: pushes refused while the endpoint is down are sometimes never retried (seen
here: 23 and 56 of 1,000 due messages lost, none in the dead-letter topic; reproduced against
a bare emulator and a plain HTTP endpoint, see tests/reliability/README.md). So once the
emulator's own redeliveries have settled, the test delivers **every** due message of the tick
again, a superset of what Pub/Sub would redeliver. The oracle: exactly one task at the
collector and one ``created`` ledger row per dispatch key, none missing, nothing left
dead-lettered. A due message may reach the DLQ only if fanout was down longer than the local
retry budget (10 attempts at 1-2 s backoff); it is then replayed with ``dispatcher dlq replay``.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.support.core import subscription_doc, utc
from tests.support.polling import wait_for
from tests.support.reliability import FaultStack, rfc3339

pytestmark = pytest.mark.reliability

DUE = 1000
PREFIX = "kill-fanout-"
SLOT = utc("2026-02-02T10:00")
SOURCES = [
    {"id": "feed", "kind": "rss", "params": {}},
    {"id": "query", "kind": "news-api", "params": {"q": "acme"}},
]


def _settled(faults: FaultStack) -> bool:
    """Nothing moves any more: queues idle and the ledger unchanged over two polls."""
    seen: list[int] = []

    def still() -> bool:
        seen.append(len(faults.ledger_rows(PREFIX)))
        return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] and faults.queues_idle()

    # Waiting longer is not leniency: the oracle below still demands exactly once. On a loaded
    # 2-core machine the emulator's 1-2 s redeliveries can keep the ledger moving past a minute.
    wait_for(still, timeout=180, interval=1.0, message="fanout settled")
    return True


def test_fanout_killed_mid_run_dispatches_every_key_exactly_once(faults: FaultStack) -> None:
    docs = {
        f"{PREFIX}{i:04d}": subscription_doc(
            f"{PREFIX}{i:04d}",
            schedule={"every": 300},
            start=SLOT,
            shard_count=faults.settings.shard_count,
            sources=SOURCES,
            jitter_seconds=0,
        )
        for i in range(DUE)
    }
    faults.seed(docs)
    expected = {(sid, rfc3339(SLOT), s["id"]) for sid in docs for s in SOURCES}
    began = time.monotonic()
    faults.publish("dispatcher-ticks", [(json.dumps({"time": rfc3339(SLOT)}).encode(), {})])

    # Kill while the fan-out is clearly under way: some keys done, most not.
    wait_for(
        lambda: len(faults.ledger_rows(PREFIX)) >= 300,
        timeout=60,
        interval=0.05,
        message="fanout under way",
    )
    faults.kill9("fn-fanout")
    rows_at_kill = faults.ledger_rows(PREFIX)
    collected_at_kill = len(faults.collected(PREFIX))
    restart_seconds = faults.restart("fn-fanout")

    _settled(faults)
    after_emulator = faults.collected(PREFIX)
    states_after_emulator = Counter(state for _, state in faults.ledger_rows(PREFIX))
    lost = {sid for sid, _, _ in expected - set(after_emulator)}
    # Local retries wait 1-2 s, so a restart slower than the retry budget (the CI machine has
    # taken 12 s) can dead-letter due messages; production waits 10-300 s between attempts.
    # Only then is a dead letter acceptable, and it comes back the operator's way.
    replayed = faults.replay_retry_exhausted("dispatcher-due", restart_seconds)
    # The redelivery production Pub/Sub guarantees, as a superset: every due message again.
    faults.publish(
        "dispatcher-due",
        [
            (
                json.dumps(
                    {"subscription_id": sid, "slot": rfc3339(SLOT), "reason": "schedule"}
                ).encode(),
                {"redelivery": "1"},
            )
            for sid in docs
        ],
    )
    counts = faults.wait_collected(PREFIX, len(expected), timeout=240)
    keys = faults.wait_ledger_created(PREFIX, len(expected), timeout=30)
    elapsed = time.monotonic() - began
    unfinished_at_kill = Counter(state for _, state in rows_at_kill if state != "created")
    duplicates = {k: n for k, n in counts.items() if n > 1}
    letters = [m for m in faults.pull_dead_letters() if PREFIX.encode() in m.data]
    print(
        f"\nfanout kill -9: {DUE} due x {len(SOURCES)} sources = {len(expected)} keys; killed "
        f"with {len(rows_at_kill)} ledger rows (not created yet: {dict(unfinished_at_kill)}) "
        f"and {collected_at_kill} tasks collected; restart {restart_seconds:.1f}s; after the "
        f"emulator's redeliveries {len(after_emulator)} keys collected, ledger "
        f"{dict(states_after_emulator)}, {len(lost)} due messages lost by the emulator, "
        f"{replayed} dead-lettered and replayed; after "
        f"redelivering all {DUE}: {len(counts)} keys collected from {sum(counts.values())} task "
        f"requests, {len(duplicates)} duplicated, {len(expected - set(counts))} missing, "
        f"{len(keys)} created ledger rows, {len(letters)} dead letters; {elapsed:.1f}s"
    )
    assert set(counts) == expected
    assert duplicates == {}
    assert sorted(keys) == sorted(expected)
    assert letters == []
