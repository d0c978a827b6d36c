"""Task names derived from dispatch keys: stable, distinct, in Cloud Tasks' alphabet and length."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.dispatch_key import MAX_TASK_ID_LENGTH, DispatchKey, shard_of, task_id, task_name

SLOT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
ALLOWED = re.compile(r"^[A-Za-z0-9_-]{1,500}$")
ids = st.from_regex(r"\A[a-z0-9](?:[a-z0-9_-]{0,98}[a-z0-9])?\Z")


def test_the_name_is_a_hashed_prefix_then_a_readable_suffix() -> None:
    name = task_id(DispatchKey("acme-news", SLOT, "reuters-rss"))
    prefix, suffix = name.split("-", 1)
    assert re.fullmatch(r"[0-9a-f]{32}", prefix)
    assert suffix == "acme-news-reuters-rss-20260105t090000z"


def test_the_same_instant_in_another_offset_is_the_same_key() -> None:
    paris = SLOT.astimezone(timezone(timedelta(hours=1)))
    assert task_id(DispatchKey("a", paris, "s")) == task_id(DispatchKey("a", SLOT, "s"))


def test_the_full_name_sits_under_the_queue() -> None:
    queue = "projects/p/locations/l/queues/collect-rss"
    key = DispatchKey("a", SLOT, "s")
    assert task_name(queue, key) == f"{queue}/tasks/{task_id(key)}"


@given(ids, ids, st.integers(min_value=0, max_value=10**6))
def test_names_are_valid_for_any_ids(subscription: str, source: str, minutes: int) -> None:
    name = task_id(DispatchKey(subscription, SLOT + timedelta(minutes=minutes), source))
    assert ALLOWED.fullmatch(name)
    assert len(name) <= MAX_TASK_ID_LENGTH


@given(ids, ids, ids, ids)
def test_different_keys_get_different_hashes(a: str, b: str, c: str, d: str) -> None:
    first = task_id(DispatchKey(a, SLOT, b))[:32]
    second = task_id(DispatchKey(c, SLOT, d))[:32]
    assert (first == second) == ((a, b) == (c, d))


def test_neighbouring_slots_do_not_share_a_prefix() -> None:
    prefixes = {task_id(DispatchKey("a", SLOT + timedelta(minutes=m), "s"))[:4] for m in range(50)}
    # Sequential slots spread over the key space instead of clustering (50 draws of 65536).
    assert len(prefixes) >= 48


# --- queue shards -------------------------------------------------------------------------------


def test_the_shard_is_a_stable_function_of_the_key_hash() -> None:
    key = DispatchKey("acme", datetime(2026, 1, 5, 9, 0, tzinfo=UTC), "reuters")
    plus_one = timezone(timedelta(hours=1))
    same = DispatchKey("acme", datetime(2026, 1, 5, 10, 0, tzinfo=plus_one), "reuters")
    assert shard_of(key, 1) == 0
    assert shard_of(key, 4) == shard_of(same, 4)
    # Pinned: a release that changed the function would move in-flight keys to other queues.
    digest = int(hashlib.sha256(key.canonical().encode()).hexdigest(), 16)
    assert shard_of(key, 7) == digest % 7
    with pytest.raises(ValueError):
        shard_of(key, 0)


def test_keys_spread_evenly_over_the_shards() -> None:
    slot = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    counts = [0, 0, 0, 0]
    for i in range(4000):
        counts[shard_of(DispatchKey(f"sub-{i}", slot, "rss-1"), 4)] += 1
    assert all(900 <= c <= 1100 for c in counts), counts
