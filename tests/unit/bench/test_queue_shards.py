"""The shard benchmark builds the production configuration: every shard at the queue ceiling."""

from __future__ import annotations

import json

from bench.queue_shards import DEFAULT_OUTPUT, KIND, sharded_settings
from shared.config import load_settings


def test_each_shard_runs_at_the_queue_rate_and_the_kind_at_shards_times_it() -> None:
    settings = sharded_settings(load_settings(environ={}), 2, 20.0, "t")
    queue = settings.queues[KIND]
    assert queue.shard_rate() == 20.0 and queue.max_dispatches_per_second == 40.0
    assert [p.rsplit("/", 1)[-1] for p in settings.queue_paths(KIND)] == ["bench-t", "bench-t-1"]


def test_the_committed_result_shows_two_shards_near_twice_one() -> None:
    result = json.loads(DEFAULT_OUTPUT.read_text())
    rounds = {r["shards"]: r for r in result["rounds"]}
    assert rounds[1]["queue_rate_limit"] == rounds[2]["queue_rate_limit"]
    # The hash never splits keys perfectly evenly: the busiest shard sets the pace.
    assert 1.7 <= result["ratios"]["2_shards_vs_1"] <= 2.1
    assert abs(rounds[2]["seconds"] - rounds[2]["predicted_seconds"]) < 0.15 * rounds[2]["seconds"]
