"""Bad input at volume: 1,000 poison due messages mixed into 1,000 good ones.

Everything goes through the real ``dispatcher-due`` topic and its push subscription to the
fanout function. Five kinds of poison, 200 each, interleaved with the good messages: bytes that
are not JSON, bytes that are not UTF-8, a misspelt field, a missing ``subscription_id``, and a
subscription nobody created. The oracle: every good one dispatched exactly once (collector and
ledger), every poison one in ``dispatcher-due-dlq`` with the reason class its kind calls for,
none of the good ones there.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.support.core import subscription_doc, utc
from tests.support.polling import wait_for
from tests.support.reliability import DeadLetter, FaultStack, rfc3339

pytestmark = pytest.mark.reliability

GOOD = 1000
POISON = 1000
PREFIX = "poison-good-"
SLOT = utc("2026-02-03T11:00")

# kind → (message data for poison number n, the reason class the DLQ must carry)
KINDS: dict[str, tuple[str, str]] = {
    "not-json": ("{{not json #{n}", "JsonDecodeError"),
    "not-utf8": ("", "NotUtf8Error"),
    "misspelt-field": ('{{"subscription_id": "x{n}", "dry_runn": true}}', "SchemaValidationError"),
    "missing-id": (
        '{{"slot": "2026-02-03T11:00:00Z", "reason": "schedule"}}',
        "SchemaValidationError",
    ),
    "unknown-subscription": (
        '{{"subscription_id": "poison-ghost-{n}", "slot": "2026-02-03T11:00:00Z"}}',
        "UnknownSubscriptionError",
    ),
}


def _poison(n: int) -> tuple[bytes, dict[str, str]]:
    kind = list(KINDS)[n % len(KINDS)]
    template, _ = KINDS[kind]
    data = (
        b"\xff\xfe\xfa" + str(n).encode() if kind == "not-utf8" else template.format(n=n).encode()
    )
    return data, {"poison": str(n), "poison_kind": kind}


def test_every_good_message_is_dispatched_and_every_poison_one_dead_lettered(
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
        for i in range(GOOD)
    }
    faults.seed(docs)
    good = [
        (
            json.dumps(
                {"subscription_id": sid, "slot": rfc3339(SLOT), "reason": "schedule"}
            ).encode(),
            {"good": sid},
        )
        for sid in docs
    ]
    mixed = [
        m for pair in zip(good, (_poison(n) for n in range(POISON)), strict=True) for m in pair
    ]
    began = time.monotonic()
    faults.publish("dispatcher-due", mixed)

    letters: list[DeadLetter] = []

    def all_poison_dead_lettered() -> bool:
        letters.extend(faults.pull_dead_letters())
        return len({m.attributes.get("poison") for m in letters} - {None}) >= POISON

    wait_for(all_poison_dead_lettered, timeout=240, interval=0.5, message=f"{POISON} dead letters")
    expected = {(sid, rfc3339(SLOT), "feed") for sid in docs}
    counts = faults.wait_collected(PREFIX, len(expected), timeout=240)
    keys = faults.wait_ledger_created(PREFIX, len(expected), timeout=30)
    letters.extend(faults.pull_dead_letters())
    elapsed = time.monotonic() - began

    poison_letters = [m for m in letters if "poison" in m.attributes]
    by_kind = Counter(m.attributes["poison_kind"] for m in poison_letters)
    classes = Counter(
        (m.attributes["poison_kind"], m.attributes.get("dlq_reason_class")) for m in poison_letters
    )
    good_letters = [m for m in letters if "good" in m.attributes]
    print(
        f"\npoison at volume: {GOOD} good + {POISON} poison published interleaved; "
        f"{len(counts)} good keys collected ({sum(counts.values())} requests), {len(keys)} "
        f"created ledger rows; {len(poison_letters)} dead letters for "
        f"{len({m.attributes['poison'] for m in poison_letters})} distinct poison messages "
        f"(by kind {dict(by_kind)}), {len(good_letters)} good ones dead-lettered; {elapsed:.1f}s"
    )
    assert set(counts) == expected
    assert all(n == 1 for n in counts.values()), {k: n for k, n in counts.items() if n > 1}
    assert sorted(keys) == sorted(expected)
    assert good_letters == []
    assert {m.attributes["poison"] for m in poison_letters} == {str(n) for n in range(POISON)}
    # Each kind dead-lettered with its own reason, the data kept as sent (replayable).
    assert {kind for kind, _ in classes} == set(KINDS)
    assert all(reason == KINDS[kind][1] for kind, reason in classes), classes
    for letter in poison_letters:
        data, _ = _poison(int(letter.attributes["poison"]))
        assert letter.data == data
        assert letter.attributes["dlq_source_topic"] == "dispatcher-due"
        assert letter.attributes.get("dlq_reason")
