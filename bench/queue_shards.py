"""Two queue shards dispatch twice one shard's rate: the reason ``[queues.<kind>] shards`` exists.

A Cloud Tasks queue dispatches at most 500 tasks/s (a system limit, not a quota). A source kind
that must dispatch faster is sharded over N queues (``shared/config.py`` QueueConfig.shards);
fanout puts each task on the shard its dispatch key hashes to. This benchmark checks, on our
Cloud Tasks emulator (which honours ``max_dispatches_per_second`` with a token bucket), that the
kind's dispatch rate grows with the number of shards and by how much the hash's imbalance costs.

Per-queue ceiling: every queue runs at ``--queue-rate`` (default 20/s), standing in for the 500/s
ceiling. It is low on purpose: the measurement is about the queue limit, not about the two
shared cores (the emulator dispatches thousands per second when unthrottled, see
``bench/results/cloudtasks.json``). Each round:

1. builds the production code path: ``Settings`` with one kind of ``shards`` queues whose kind
   rate is ``shards x queue-rate`` (so each shard runs at the ceiling), creates the queues with
   :func:`shared.tasks_admin.apply_queues` (what ``dispatcher stack up`` does) and pauses them;
2. creates ``--tasks`` tasks named and placed exactly like fanout (one per dispatch key of
   distinct subscriptions, queue from ``settings.queue_path_for``);
3. resumes every shard at once and times until a local HTTP target has answered every task.

``rate = tasks / seconds``. Each queue starts with a full token bucket (``max_burst_size =
ceil(rate)`` in the emulator) and the busiest shard finishes last, so the token bucket predicts
``(busiest shard's tasks - burst) / queue-rate`` seconds: ``predicted_seconds`` is written beside
the measured time. The ratio ``N shards / 1 shard`` of the rates is printed and written to JSON
(default ``bench/results/queue_shards.json``).

Run: ``.venv/bin/python -m bench.queue_shards [--tasks 400 --queue-rate 20 --shards 1 2]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from google.cloud import tasks_v2

from bench.cloudtasks_throughput import _client, emulator_and_target
from bench.cpu import process_cpu_seconds
from shared.config import QueueConfig, Settings, load_settings
from shared.dispatch_key import DispatchKey, task_name
from shared.tasks_admin import apply_queues

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "queue_shards.json"
KIND = "rss"
SLOT = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


def sharded_settings(base: Settings, shards: int, queue_rate: float, round_id: str) -> Settings:
    """``base`` with one kind whose ``shards`` queues each run at ``queue_rate`` per second."""
    queue = QueueConfig(
        kind=KIND,
        name=f"bench-{round_id}",
        max_dispatches_per_second=queue_rate * shards,
        max_concurrent_dispatches=100 * shards,
        max_attempts=3,
        min_backoff_seconds=1.0,
        max_backoff_seconds=10.0,
        max_doublings=2,
        shards=shards,
    )
    return replace(base, project="bench", tasks_location="us-central1", queues={KIND: queue})


def measure(
    target: str, shards: int, tasks: int, queue_rate: float, url: str, count_url: str
) -> dict[str, Any]:
    """One round: ``tasks`` fanout-named tasks over ``shards`` paused queues, resumed at once."""
    client = _client(target)
    settings = sharded_settings(load_settings(environ={}), shards, queue_rate, os.urandom(4).hex())
    apply_queues(settings, client)
    paths = settings.queue_paths(KIND)
    for path in paths:
        client.pause_queue(name=path)
    per_queue: Counter[str] = Counter()
    for i in range(tasks):
        key = DispatchKey(f"bench-sub-{i}", SLOT, "feed")
        queue = settings.queue_path_for(KIND, key)
        per_queue[queue] += 1
        client.create_task(
            parent=queue,
            task=tasks_v2.Task(
                name=task_name(queue, key),
                http_request=tasks_v2.HttpRequest(url=url, body=b'{"source": "bench"}'),
            ),
        )
    before = int(requests.get(count_url, timeout=5).text)
    started = time.perf_counter()
    for path in paths:
        client.resume_queue(name=path)
    deadline = started + max(120.0, 4 * tasks / (queue_rate * shards))
    while int(requests.get(count_url, timeout=5).text) < before + tasks:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{shards} shard(s): dispatch did not finish in time")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    burst = math.ceil(queue_rate) * shards
    counts = [per_queue[p] for p in paths]
    return {
        "shards": shards,
        "queues": [p.rsplit("/", 1)[-1] for p in paths],
        "queue_rate_limit": queue_rate,
        "kind_rate_limit": queue_rate * shards,
        "tasks": tasks,
        "tasks_per_shard": counts,
        # The busiest shard finishes last: an uneven hash costs rate in proportion.
        "imbalance": round(max(counts) / (tasks / shards), 3),
        "seconds": round(elapsed, 3),
        "predicted_seconds": round(max(max(counts) - burst // shards, 0) / queue_rate, 3),
        "rate": round(tasks / elapsed, 2),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=400, help="tasks per round")
    parser.add_argument("--queue-rate", type=float, default=20.0, help="per-queue ceiling (/s)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the emulator and a target, run one round per shard count, print, write JSON."""
    args = parse_args(argv)
    if 1 not in args.shards:
        raise SystemExit("--shards must include 1: it is the baseline of the ratio")
    rounds: list[dict[str, Any]] = []
    with emulator_and_target("queue-shards-bench-") as rig:
        for shards in args.shards:
            cpu_before = process_cpu_seconds(rig.pid) or 0.0
            result = measure(
                rig.target, shards, args.tasks, args.queue_rate, rig.url, rig.count_url
            )
            cpu = (process_cpu_seconds(rig.pid) or 0.0) - cpu_before
            result["emulator_cores_busy"] = round(cpu / result["seconds"], 3)
            rounds.append(result)

    baseline = next(r for r in rounds if r["shards"] == 1)
    ratios = {
        f"{r['shards']}_shards_vs_1": round(r["rate"] / baseline["rate"], 2)
        for r in rounds
        if r["shards"] != 1
    }
    output = {
        "benchmark": "queue_shards",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "queue_rate_limit": args.queue_rate,
        "rounds": rounds,
        "ratios": ratios,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(output, indent=2) + "\n")
    for r in rounds:
        print(
            f"{r['shards']} shard(s) at {r['queue_rate_limit']:g}/s each: {r['tasks']} tasks "
            f"{r['tasks_per_shard']} in {r['seconds']:.2f} s (token bucket predicts "
            f"{r['predicted_seconds']:.2f} s) = {r['rate']:.1f}/s, "
            f"emulator {r['emulator_cores_busy']} cores busy"
        )
    for name, ratio in ratios.items():
        print(f"{name}: x{ratio} the one-shard rate")
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
