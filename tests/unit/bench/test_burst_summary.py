"""The burst's summary.json: the goals' figures derived from one run's measurements."""

from __future__ import annotations

from typing import Any

from bench.burst import fanout_firestore_reads, summarize
from bench.cpu import cpu_report


def test_fanout_reads_count_every_decision_that_did_not_use_the_snapshot() -> None:
    lines: list[dict[str, Any]] = [
        {
            "logger": "shared.usecases.fanout",
            "decision": "dispatched",
            "subscription_read": "snapshot",
        },
        {"logger": "shared.usecases.fanout", "decision": "skip", "subscription_read": "firestore"},
        # a fanout from before the snapshot read the document for every message
        {"logger": "shared.usecases.fanout", "decision": "dispatched"},
        {"logger": "shared.handler", "outcome": "acked", "duration_ms": 4.0},
    ]
    assert fanout_firestore_reads(lines) == 2


def test_summary_splits_the_dispatch_path_the_results_path_and_the_stand_ins() -> None:
    before = {
        "fn-select": 0.0,
        "fn-fanout": 0.0,
        "fn-results": 0.0,
        "collector": 0.0,
        "firestore": 0.0,
        "bench-driver": 0.0,
    }
    after = {
        "fn-select": 1.0,
        "fn-fanout": 3.0,
        "fn-results": 4.0,
        "collector": 6.0,
        "firestore": 2.0,
        "bench-driver": 0.5,
    }
    cpu = cpu_report(before, after, 1000, "due_message", 20.0, 2)
    summary = summarize(
        due=1000,
        tasks=2000,
        seconds=20.0,
        cpu=cpu,
        select_reads=[1000, 250],
        fanout_reads=0,
        fanout_ms=[3.0, 5.0, 9.0],
        machine={"cpus": 2},
    )
    assert summary["ours_cpu_ms_per_due"] == 4.0  # select + fanout only
    assert summary["stand_ins_cpu_ms_per_due"] == 8.0  # collector + firestore
    assert summary["results_function_cpu_ms_per_task"] == 2.0
    assert summary["collector_cpu_ms_per_task"] == 3.0
    assert summary["results_cpu_ms_per_task"] == 5.0
    assert summary["fanout_p50_ms"] == 5.0
    # A redelivered tick's second pass re-read 250 documents the first had not advanced yet.
    assert summary["firestore_reads_per_due"] == 1.25
    assert summary["firestore_reads_per_due_first_pass"] == 1.0
    assert summary["select_passes"] == 2
    # 16.5 CPU seconds in all on 2 cores: 8.25 s at best
    assert abs(summary["burst_at_best_s"] - 8.25) < 0.06
    assert summary["burst_s"] == 20.0
    assert summary["machine"] == {"cpus": 2}
    for key in (
        "ours_cpu_ms_per_due",
        "stand_ins_cpu_ms_per_due",
        "fanout_p50_ms",
        "firestore_reads_per_due",
        "burst_s",
        "burst_at_best_s",
        "machine",
    ):
        assert key in summary
