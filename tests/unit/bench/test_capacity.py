"""The capacity model: its inputs are the committed measurements, its arithmetic is checked by
hand, and the deployment it sizes is the one Terraform and app.production.toml declare."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from bench.capacity import (
    DEFAULT_OUTPUT,
    DELIVER_CONNECTIONS,
    LIMITS,
    OTHER_LEDGER_INSTANCES,
    PRICES,
    RESULTS,
    Assumptions,
    Deployment,
    Measured,
    current_production,
    evaluate,
    load_measured,
    run,
    scheduler_per_subscription,
    single_scanner,
    sized_for,
)
from shared.config import load_settings
from tests.unit.deploy.hcl import locals_, tfvars, variables

MEASURED = Measured(
    select_ms=1.0,
    fanout_fixed_ms=6.0,
    fanout_per_task_ms=2.0,
    ledger_fixed_ms=1.0,
    ledger_per_task_ms=0.5,
    fanout_latency_ms=20.0,
)
SMALL = Deployment(
    name="hand",
    fanout_max_instances=10,
    fanout_concurrency=2,
    select_parallel_ticks=1,
    firestore_shards=16,
    kind_rate=1000.0,
    kind_shards=2,
    jitter_seconds=30,
    pool_max_size=2,
    database_functions_instances=16,
    database_max_connections=100,
    database_reserved_connections=20,
    database_vcpus=2,
)
ASSUME = Assumptions(fanout_io_ms=40.0, pipeline_latency_s=2.0)


def _json(name: str) -> dict[str, object]:
    value = json.loads((RESULTS / name).read_text())
    assert isinstance(value, dict)
    return value


def test_the_model_reads_its_per_message_figures_from_the_local_measurements() -> None:
    measured = load_measured()
    burst = _json("burst.json")["cpu"]["cpu_ms_per_due_message"]  # type: ignore[index]
    one = _json("pipeline.json")["rounds"][0]["pipeline"]  # type: ignore[index]
    one_cpu = one["cpu"]["cpu_ms_per_due_message"]
    assert measured.select_ms == burst["fn-select"]
    # The line reproduces the 2-source burst, and the 1-source run where the two runs agree on a
    # non-negative fixed part; where they do not, it charges at least the 1-source figure.
    assert math.isclose(measured.fanout_ms(2), burst["fn-fanout"])
    assert math.isclose(measured.ledger_ms(2), burst["postgres"])
    for cost, one_run in (
        (measured.fanout_ms(1), one_cpu["fn-fanout"]),
        (measured.ledger_ms(1), one_cpu["postgres"]),
    ):
        fits = math.isclose(cost, one_run)
        assert fits or cost > one_run
    assert measured.fanout_latency_ms == one["fanout_median_ms"]
    whole = _json("burst.json")
    assert math.isclose(
        measured.results_ms,
        burst["fn-results"] * whole["due"] / whole["tasks"],
    )
    assert all(source.startswith("bench/results/") for source in measured.sources.values())


def test_the_committed_capacity_json_is_what_the_model_computes_now() -> None:
    committed = json.loads(DEFAULT_OUTPUT.read_text())
    assert committed == json.loads(json.dumps(run(load_measured()), default=str))


def test_one_tick_by_hand() -> None:
    out = evaluate(12_000, 3, SMALL, MEASURED, ASSUME)
    assert out.tasks == 36_000
    assert out.select_seconds == 12.0  # 12,000 x 1 ms on one select instance
    assert out.firestore_write_seconds == 1.5  # 12,000 / (500 x 16)
    # fanout: 12 ms CPU + 40 ms I/O per request; 2 concurrent -> 38.5/s, CPU cap 83/s.
    assert out.fanout_seconds == round(12_000 / (2 / 0.052 * 10), 2)
    assert out.ledger_seconds == round(12_000 * 2.5 / 1000 / 2, 2)
    assert out.created_binding == "fanout instances x concurrency"
    assert out.created_seconds == round(2.0 + 12_000 / (2 / 0.052 * 10), 1)
    # 3 sources over 4 kinds: the busiest kind carries 12,000 tasks at min(1000, 2 x 500)/s.
    assert out.busiest_kind_tasks == 12_000 and out.kind_dispatch_rate == 1000.0
    assert out.dispatched_seconds == out.created_seconds
    assert out.shards_needed_for_jitter_window == 1
    assert out.connections == 32 and out.connection_budget == 80
    assert out.created_within_60s is True
    # Created after the 30 s window: the last tasks dispatch as soon as they exist.
    assert out.dispatch_binding.startswith("task creation")
    assert out.dispatched_within_jitter_window is False
    assert out.tasks_api_share_of_quota == round(36_000 / 6_000_000, 4)


def test_the_queue_limit_binds_dispatch_when_a_kind_asks_more_than_its_shards_carry() -> None:
    slow = replace(SMALL, kind_rate=5000.0, kind_shards=1, fanout_max_instances=1000)
    out = evaluate(20_000, 1, slow, MEASURED, ASSUME)
    assert out.kind_dispatch_rate == 500.0
    assert out.dispatched_seconds == 40.0 and out.dispatch_binding.startswith("queue limit")
    assert out.shards_needed_for_jitter_window == 2
    configured = evaluate(20_000, 1, replace(slow, kind_rate=400.0), MEASURED, ASSUME)
    assert configured.dispatch_binding == "configured kind rate"


def test_a_pool_too_large_for_the_database_is_not_within_the_minute() -> None:
    fast = replace(SMALL, fanout_max_instances=1000, select_parallel_ticks=16, database_vcpus=64)
    assert evaluate(1000, 1, fast, MEASURED, ASSUME).created_within_60s
    crowded = replace(fast, database_functions_instances=1000)
    assert not evaluate(1000, 1, crowded, MEASURED, ASSUME).created_within_60s


def test_the_results_function_by_hand() -> None:
    measured = replace(MEASURED, results_ms=5.0)
    assume = replace(ASSUME, results_io_ms=15.0)
    # 20 ms per request, 4 in flight = 200/s, but one vCPU runs only 200 x 5 ms: 200/s.
    busy = replace(SMALL, results_max_instances=3, results_concurrency=4)
    out = evaluate(12_000, 3, busy, measured, assume)
    assert out.result_messages == 36_000
    assert out.results_seconds == 60.0 and out.results_within_window
    # One in flight: 50/s per instance, 240 s for the tick's outcomes.
    slow = evaluate(12_000, 3, replace(busy, results_concurrency=1), measured, assume)
    assert slow.results_seconds == 240.0 and not slow.results_within_window
    sized = sized_for(12_000, 3, measured, assume)
    assert sized.results_concurrency == min(4, sized.pool_max_size)
    assert evaluate(12_000, 3, sized, measured, assume).results_within_window
    assert sized.database_fixed_connections == DELIVER_CONNECTIONS


def test_monthly_cost_counts_two_task_operations_and_the_free_tiers() -> None:
    out = evaluate(100_000, 3, SMALL, MEASURED, ASSUME, runs_per_month=720)
    ops = 2 * 300_000 * 720
    assert out.monthly_usd["cloud_tasks"] == round((ops - 1e6) * PRICES["tasks_op"].usd, 2)
    reads = 2 * 100_000 * 720
    expected = (reads - PRICES["firestore_read"].free_per_month) * PRICES["firestore_read"].usd
    assert out.monthly_usd["firestore_reads"] == round(expected, 2)
    assert evaluate(10, 1, SMALL, MEASURED, ASSUME, runs_per_month=1).monthly_usd_total == 0


def test_the_alternatives() -> None:
    scheduler = scheduler_per_subscription(100_000, 3, MEASURED)
    assert scheduler["regions_needed_at_max_quota"] == 20
    assert not scheduler["feasible_in_one_region"]
    assert scheduler_per_subscription(4000, 1, MEASURED)["feasible_in_one_region"]
    scanner = single_scanner(10_000, 2, MEASURED, ASSUME)
    assert scanner["seconds_tick_to_last_task"] == round(2.0 + (10_000 * 6 + 20_000 * 2) / 1000, 1)


def test_every_limit_and_price_names_its_source_and_says_whether_it_was_confirmed() -> None:
    for limit in LIMITS.values():
        assert limit.url.startswith("https://") and limit.published
    for price in PRICES.values():
        assert price.url.startswith("https://") and price.published
    assert LIMITS["tasks_dispatch_per_queue"].value == 500
    assert LIMITS["tasks_api_requests_per_minute"].value == 6_000_000
    assert not LIMITS["pubsub_push_rate"].confirmed


def test_the_headline_100k_x_3_is_created_in_a_minute_and_dispatched_in_the_jitter_window() -> None:
    measured = load_measured()
    sized = sized_for(100_000, 3, measured, Assumptions())
    out = evaluate(100_000, 3, sized, measured)
    assert out.created_within_60s and out.dispatched_within_jitter_window
    assert out.tasks_api_share_of_quota < 0.1, "far inside the Cloud Tasks API quota"
    assert sized.kind_shards * 4 <= LIMITS["tasks_queues_per_region"].value
    assert not evaluate(100_000, 3, current_production(), measured).created_within_60s
    # The tick's outcomes are recorded before the next tick's arrive; 2 x 1 would take hours.
    assert out.results_within_window and out.connections <= out.connection_budget
    before = evaluate(100_000, 3, current_production(), measured)
    assert before.result_messages == 300_000 and not before.results_within_window


@pytest.mark.parametrize("environment", ["production"])
def test_production_terraform_and_pool_are_the_models_sizing(environment: str) -> None:
    sized = sized_for(100_000, 3, load_measured(), Assumptions())
    fanout = tfvars(environment)["functions"]["fanout"]
    assert fanout["max_instances"] == sized.fanout_max_instances
    assert fanout["concurrency"] == sized.fanout_concurrency
    settings = load_settings(environ={"DISPATCHER_ENV": environment})
    assert settings.ledger_pool_max_size == sized.pool_max_size
    assert tfvars(environment)["database_max_connections"] == sized.database_max_connections
    results = tfvars(environment)["functions"]["results"]
    assert results["max_instances"] == sized.results_max_instances
    assert results["concurrency"] == sized.results_concurrency
    # The model counts the other ledger functions and deliver at their tfvars sizes.
    functions = tfvars(environment)["functions"]
    for name, instances in OTHER_LEDGER_INSTANCES.items():
        assert functions[name]["max_instances"] == instances, name
    deliver = (
        tfvars(environment).get("deliver_function") or variables()["deliver_function"]["default"]
    )
    assert deliver["max_instances"] * locals_()["deliver_pool_max_size"] == DELIVER_CONNECTIONS
    assert tfvars(environment)["functions"]["select"]["max_instances"] >= min(
        sized.select_parallel_ticks, settings.shard_count
    )
