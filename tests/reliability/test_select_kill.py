"""kill -9 of the select function in the middle of a tick with 1,000 due subscriptions.

The tick goes through the real push path. Once fanout has recorded some dispatches (so select
has published some pages and is still working on others), select's process group gets SIGKILL
and is restarted. The tick was never acknowledged, so Pub/Sub delivers it again: select reads
what is still due (documents it advanced before dying are no longer due; pages published but
not advanced are published again, and fanout absorbs the duplicates).

The Pub/Sub emulator sometimes never retries a push refused while the endpoint was down (see
tests/reliability/README.md); production Pub/Sub does. So once the emulator's redeliveries
have settled, the test publishes the same tick again if anything is missing: what production's
redelivery does. The oracle: one task and one ``created`` ledger row per key, every
``next_run_at`` advanced one slot, no due message dead-lettered and nothing left in any DLQ.

The tick itself may reach its DLQ, for a measured reason: the local stack retries pushes after
1-2 s (``local.retry``) where production waits 10-60 s, so the tick's 5 attempts run out in
about 7 s of select being down, and a restart on a loaded 2-core CI machine has taken 12 s.
Production's backoff spends about 130 s on the same 5 attempts. The test then requires that the
down window really was longer than the local retry budget's floor (a tick dead-lettered while
select was up would be a bug) and brings it back the operator's way, ``dispatcher dlq replay``.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest

from tests.support.core import utc
from tests.support.polling import wait_for
from tests.support.reliability import FaultStack, rfc3339

pytestmark = pytest.mark.reliability

DUE = 1000
PREFIX = "kill-select-"
SLOT = utc("2026-02-05T13:00")


def test_select_killed_mid_tick_dispatches_every_key_exactly_once(faults: FaultStack) -> None:
    docs = faults.seed_due(PREFIX, DUE, SLOT)
    expected = {(sid, rfc3339(SLOT), "feed") for sid in docs}
    tick: list[tuple[bytes, dict[str, str]]] = [(json.dumps({"time": rfc3339(SLOT)}).encode(), {})]
    began = time.monotonic()
    faults.publish("dispatcher-ticks", tick)
    wait_for(
        lambda: len(faults.ledger_rows(PREFIX)) >= 50,
        timeout=60,
        interval=0.02,
        message="select under way",
    )
    faults.kill9("fn-select")
    at_kill = len(faults.ledger_rows(PREFIX))
    restart_seconds = faults.restart("fn-select")
    faults.wait_settled(PREFIX)
    after_emulator = len(faults.collected(PREFIX))
    tick_replayed = faults.replay_retry_exhausted("dispatcher-ticks", restart_seconds)
    republished = not tick_replayed and after_emulator < len(expected)
    if republished:
        faults.publish("dispatcher-ticks", tick)
    counts = faults.wait_collected(PREFIX, len(expected), timeout=240)
    keys = faults.wait_ledger_created(PREFIX, len(expected), timeout=30)
    elapsed = time.monotonic() - began
    advanced = sum(
        1
        for snapshot in faults.firestore.collection("subscriptions").stream()
        if snapshot.id.startswith(PREFIX)
        and (snapshot.to_dict() or {}).get("next_run_at") == SLOT + timedelta(minutes=5)
    )
    duplicates = {k: n for k, n in counts.items() if n > 1}
    letters = [m for m in faults.pull_dead_letters() if PREFIX.encode() in m.data]
    tick_letters = faults.pull_dead_letters("dispatcher-ticks-dlq-sub")
    print(
        f"\nselect kill -9: {DUE} due; killed with {at_kill} ledger rows; restart "
        f"{restart_seconds:.1f}s; {after_emulator} keys after the emulator's redelivery"
        f"{' (tick published again)' if republished else ''}"
        f"{f'; {tick_replayed} tick dead letter(s) replayed' if tick_replayed else ''}; "
        f"{len(counts)} keys collected "
        f"from {sum(counts.values())} task requests, {len(duplicates)} duplicated, "
        f"{len(expected - set(counts))} missing, {len(keys)} created ledger rows, next_run_at "
        f"advanced on {advanced}, {len(letters)} due / {len(tick_letters)} tick dead letters; "
        f"{elapsed:.1f}s"
    )
    assert set(counts) == expected
    assert duplicates == {}
    assert sorted(keys) == sorted(expected)
    assert advanced == DUE
    assert letters == [] and tick_letters == []
