"""The Cloud Tasks emulator refuses connections for 30 s while fanout dispatches 1,000 due.

A first tick fans out 300 subscriptions; once their tasks are created and the emulator's queues
are idle, the emulator is stopped (its port refuses connections) and a second tick, five minutes
later, makes 1,000 subscriptions due (the 300 again and 700 more) while it is down. It stays
down 30 s, then is started again on the same port and its queues re-applied (the emulator
keeps queues and tasks in memory; production Cloud Tasks does not lose them, so the stop is
timed for a moment its queues are idle, and nothing created is lost with it). During the outage
every create fails after the gateway's retry budget, the dispatch rows are marked ``failed`` and
fanout answers 5xx; Pub/Sub redelivers and the redeliveries re-create only what is not done.
The oracle: one task at the collector and one ``created`` ledger row per key, none missing.

(One tick used to be enough: fanout was slow enough that the queues went idle mid fan-out. Since
fanout got faster they only go idle once it is done, so the outage now has its own tick.)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import timedelta

import pytest

from emulators.stack import apply_local_queues
from tests.support.core import utc
from tests.support.polling import wait_for
from tests.support.reliability import FaultStack, rfc3339

pytestmark = pytest.mark.reliability

DUE = 1000
DUE_BEFORE = 300  # fanned out before the outage, due again in it
PREFIX = "tasks-outage-"
SLOT = utc("2026-02-07T15:00")
SLOT_IN_OUTAGE = SLOT + timedelta(minutes=5)  # the seeded schedules run every 5 minutes
OUTAGE_SECONDS = 30.0


def test_cloud_tasks_down_for_30s_dispatches_every_key_exactly_once(faults: FaultStack) -> None:
    early = faults.seed_due(f"{PREFIX}a-", DUE_BEFORE, SLOT)
    late = faults.seed_due(f"{PREFIX}b-", DUE - DUE_BEFORE, SLOT_IN_OUTAGE)
    expected = {(sid, rfc3339(SLOT), "feed") for sid in early} | {
        (sid, rfc3339(SLOT_IN_OUTAGE), "feed") for sid in [*early, *late]
    }
    began = time.monotonic()
    faults.publish("dispatcher-ticks", [(json.dumps({"time": rfc3339(SLOT)}).encode(), {})])
    wait_for(
        lambda: (
            Counter(s for _, s in faults.ledger_rows(PREFIX))["created"] >= DUE_BEFORE
            and faults.queues_idle()
        ),
        timeout=60,
        interval=0.02,
        message="the first tick's tasks created with the queues idle",
    )
    faults.local.stop_component("cloudtasks")
    stopped = time.monotonic()
    at_stop = Counter(state for _, state in faults.ledger_rows(PREFIX))
    faults.publish(
        "dispatcher-ticks", [(json.dumps({"time": rfc3339(SLOT_IN_OUTAGE)}).encode(), {})]
    )
    # The outage is the fault under test: its length is the point, there is nothing to poll.
    time.sleep(OUTAGE_SECONDS)
    during = Counter(state for _, state in faults.ledger_rows(PREFIX))
    faults.restart("cloudtasks")
    apply_local_queues(faults.env)
    faults.speed_up_queues()
    outage = time.monotonic() - stopped

    counts = faults.wait_collected(PREFIX, len(expected), timeout=240)
    keys = faults.wait_ledger_created(PREFIX, len(expected), timeout=30)
    elapsed = time.monotonic() - began
    duplicates = {k: n for k, n in counts.items() if n > 1}
    letters = [m for m in faults.pull_dead_letters() if PREFIX.encode() in m.data]
    print(
        f"\ncloud tasks outage: {DUE} due ({DUE_BEFORE} before); stopped with ledger "
        f"{dict(at_stop)}; after "
        f"{outage:.0f}s refused: ledger {dict(during)}; {len(counts)} keys collected from "
        f"{sum(counts.values())} task requests, {len(duplicates)} duplicated, "
        f"{len(expected - set(counts))} missing, {len(keys)} created ledger rows, "
        f"{len(letters)} dead letters; {elapsed:.1f}s"
    )
    assert during["failed"] > 0, "the outage should have failed some creates"
    assert set(counts) == expected
    assert duplicates == {}
    assert sorted(keys) == sorted(expected)
    assert letters == []
