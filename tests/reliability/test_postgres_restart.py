"""PostgreSQL (the ledger) stopped and restarted while fanout dispatches 1,000 due subscriptions.

While the ledger is down fanout cannot record runs or claim keys: it answers 5xx and Pub/Sub
redelivers (local retry policy: 1-2 s backoff, 10 attempts before the dead-letter policy). The
server is restarted on the same port and data directory once fanout has answered 5xx
three times (each after the pool's 10 s connection timeout).
The oracle: one task and one ``created`` ledger row per key, none missing.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support.core import utc
from tests.support.polling import wait_for
from tests.support.reliability import FaultStack, rfc3339

pytestmark = pytest.mark.reliability

DUE = 1000
PREFIX = "pg-restart-"
SLOT = utc("2026-02-06T14:00")
# Each delivery waits the pool timeout (10 s) before answering 5xx; a few of them mean the
# outage lasted well past the first retries (the run above took 40 s to see 8).
FAILURES = 3


def test_ledger_restarted_mid_run_dispatches_every_key_exactly_once(faults: FaultStack) -> None:
    docs = faults.seed_due(PREFIX, DUE, SLOT)
    expected = {(sid, rfc3339(SLOT), "feed") for sid in docs}
    fanout_lines = len(faults.handle.log_lines("fn-fanout"))
    began = time.monotonic()
    faults.publish("dispatcher-ticks", [(json.dumps({"time": rfc3339(SLOT)}).encode(), {})])
    wait_for(
        lambda: len(faults.ledger_rows(PREFIX)) >= 300,
        timeout=60,
        interval=0.05,
        message="fanout under way",
    )
    at_stop = len(faults.ledger_rows(PREFIX))
    stopped = time.monotonic()
    faults.local.stop_component("postgres")

    def failing() -> int:
        lines = faults.handle.log_lines("fn-fanout")[fanout_lines:]
        return sum(1 for line in lines if line.get("outcome") in ("retry", "error"))

    # Keep the ledger down until fanout has failed many deliveries, not just the first one.
    wait_for(
        lambda: failing() >= FAILURES,
        timeout=45,
        interval=0.2,
        message=f"{FAILURES} fanout deliveries failing on the ledger",
    )
    faults.restart("postgres")
    outage = time.monotonic() - stopped
    counts = faults.wait_collected(PREFIX, len(expected), timeout=240)
    keys = faults.wait_ledger_created(PREFIX, len(expected), timeout=30)
    elapsed = time.monotonic() - began
    failures = failing()
    duplicates = {k: n for k, n in counts.items() if n > 1}
    letters = [m for m in faults.pull_dead_letters() if PREFIX.encode() in m.data]
    print(
        f"\npostgres restart: {DUE} due; stopped with {at_stop} ledger rows; outage "
        f"{outage:.1f}s, {failures} fanout answers 5xx; {len(counts)} keys collected from "
        f"{sum(counts.values())} task requests, {len(duplicates)} duplicated, "
        f"{len(expected - set(counts))} missing, {len(keys)} created ledger rows, "
        f"{len(letters)} dead letters; {elapsed:.1f}s"
    )
    assert set(counts) == expected
    assert duplicates == {}
    assert sorted(keys) == sorted(expected)
    assert letters == []
