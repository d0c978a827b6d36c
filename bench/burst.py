"""Large burst: N due subscriptions x 2 sources in one tick, through the real local stack.

Starts a private local stack, seeds N subscriptions (default 10,000) all due at one slot with
two sources each (``rss`` and ``news-api``: two queues), publishes one tick and measures the
time from the publish to the last of the 2N tasks at the collector, the time select took (its
own log line), and the peak resident memory (VmHWM) of the select and fanout processes. The
goal is "well inside the minute"; the ratio printed is burst seconds / 60.

Run: ``.venv/bin/python -m bench.burst [--due 10000]``; JSON in ``bench/results/burst.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpu import StackCpu
from bench.pipeline import CollectorTail, acked_durations_ms, log, wait_tasks
from emulators.process import group_members
from tests.support.reliability import FaultStack, rfc3339

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "burst.json"
SLOT = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
SOURCES = [
    {"id": "feed", "kind": "rss", "params": {}},
    {"id": "query", "kind": "news-api", "params": {"q": "acme"}},
]


def peak_rss_mib(pgid: int) -> dict[str, float]:
    """VmHWM (peak resident set) of every process in the group, MiB, by pid."""
    out: dict[str, float] = {}
    for pid in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[str(pid)] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            continue
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the burst; print the figures; write JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state = Path(tempfile.mkdtemp(prefix="bench-burst-"))
    log(f"starting a private stack in {state}")
    faults = FaultStack(state)
    try:
        tail = CollectorTail(faults.local.collector_records)
        began_seed = time.monotonic()
        faults.seed_due("burst-", args.due, SLOT, SOURCES)
        seed_rate = args.due / (time.monotonic() - began_seed)
        log(f"seeded {args.due:,} due subscriptions ({seed_rate:,.0f} docs/s); ticking")
        expected = args.due * len(SOURCES)
        cpu = StackCpu(faults.local)
        cpu.start()
        started = time.monotonic()
        began = datetime.now(UTC)
        faults.publish("dispatcher-ticks", [(json.dumps({"time": rfc3339(SLOT)}).encode(), {})])
        records = wait_tasks(tail, lambda b: b.get("slot") == rfc3339(SLOT), expected, 900)
        spent = cpu.report(args.due, "due_message", time.monotonic() - started)
        last = max(datetime.fromisoformat(str(r["received_at"])) for r in records)
        seconds = (last - began).total_seconds()
        ticks = [
            line
            for line in faults.handle.log_lines("fn-select")
            if line.get("tick_time") == rfc3339(SLOT) and "read" in line
        ]
        select_ms = acked_durations_ms(faults.handle.log_lines("fn-select"))
        memory = {
            name: peak_rss_mib(faults.local.processes[name].pid)
            for name in ("fn-select", "fn-fanout")
        }
    finally:
        faults.close()
    result: dict[str, Any] = {
        "benchmark": "burst",
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "when": datetime.now(UTC).isoformat(),
        "due": args.due,
        "sources": len(SOURCES),
        "tasks": len(records),
        "seconds_tick_to_last_task": round(seconds, 2),
        "share_of_the_minute": round(seconds / 60, 2),
        "select_log": ticks,
        "select_duration_ms": select_ms,
        "peak_rss_mib": memory,
        "cpu": spent,
        # The fastest this machine could go if the measured CPU per due message were all that
        # limited it (every component shares the same cores).
        "cpu_bound_seconds": round(args.due / spent["cpu_bound_per_second"], 1)
        if spent["cpu_bound_per_second"]
        else None,
        "stand_ins_only_seconds": round(args.due / spent["stand_ins_only_per_second"], 1)
        if spent["stand_ins_only_per_second"]
        else None,
    }
    print(
        f"\nburst: {args.due:,} due x {len(SOURCES)} sources = {len(records):,} tasks in "
        f"{seconds:.1f}s from the tick ({seconds / 60:.0%} of the minute); select took "
        f"{select_ms} ms; peak RSS select {memory['fn-select']} MiB, fanout "
        f"{memory['fn-fanout']} MiB"
    )
    print(
        f"CPU per due message: {spent['cpu_ms_per_due_message_total']} ms in all "
        f"(ours {spent['cpu_ms_per_due_message_ours']} ms, emulators/PostgreSQL/collector "
        f"{spent['cpu_ms_per_due_message_stand_ins']} ms) on {spent['cores']} cores: at best "
        f"{result['cpu_bound_seconds']} s here, {result['stand_ins_only_seconds']} s even if "
        "our functions cost nothing"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
