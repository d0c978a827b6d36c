"""Capacity model: how far the dispatcher scales in production, and what binds first.

The emulators cannot tell (they share two cores and walk whole collections), so this is
arithmetic on two kinds of input, both listed in docs/capacity.md with their sources:

* **published limits and prices** (:data:`LIMITS`, :data:`PRICES`): each with its documentation
  URL and the figure as published; the ones the stored docs could not confirm say so
  (``confirmed=False``) and the model still shows what they would imply;
* **our own CPU per message, measured locally** (:func:`load_measured`): read from
  ``bench/results/*.json`` at run time (file and key recorded with each figure), so the model
  agrees with the local measurements by construction; a unit test checks it does.

What is *not* measured or published is an explicit :class:`Assumptions` field (latencies of
managed services seen from a function, database vCPUs): change them and rerun.

For ``N`` due subscriptions x ``S`` sources the model computes, per deployment (Terraform
sizing + app configuration): tick -> last task created, -> last task dispatched, instances,
database connections, the limit that binds, and the monthly cost; then the same numbers for two
alternatives: one Cloud Scheduler job per subscription, and one function that scans everything.

Run: ``.venv/bin/python -m bench.capacity`` (prints a table, writes bench/results/capacity.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUTPUT = RESULTS / "capacity.json"
# The cost scenario: each of the N subscriptions runs hourly (N x 720 runs a month), the timing
# scenario: all N are due in the same minute (the burst the sizing must absorb).
RUNS_PER_SUBSCRIPTION_PER_MONTH = 30 * 24


# --------------------------------------------------------------------------- published figures


@dataclass(frozen=True)
class Limit:
    """A published quota or limit, as the documentation states it."""

    value: float
    unit: str
    url: str
    published: str
    confirmed: bool = True
    note: str = ""


LIMITS: dict[str, Limit] = {
    "tasks_dispatch_per_queue": Limit(
        500,
        "tasks/s per queue",
        "https://cloud.google.com/tasks/docs/quotas",
        "Queue dispatch rate: 500 tasks dispatched per second, per queue (system limit); "
        "to dispatch more, use multiple queues. RateLimits.max_dispatches_per_second: "
        '"The maximum allowed value is 500."',
    ),
    "tasks_api_requests_per_minute": Limit(
        6_000_000,
        "API requests/min per project",
        "https://cloud.google.com/tasks/docs/quotas",
        "API requests: 6,000,000 requests per minute (quota, adjustable)",
    ),
    "tasks_queues_per_region": Limit(
        1000,
        "queues per project and region",
        "https://cloud.google.com/tasks/docs/quotas",
        "Maximum number of queues: 1,000 per region (HTTP targets)",
    ),
    "tasks_schedule_ahead_days": Limit(
        30,
        "days",
        "https://cloud.google.com/tasks/docs/quotas",
        "Maximum task schedule time: 30 days from the current date and time",
    ),
    "run_concurrency_max": Limit(
        1000,
        "requests per instance",
        "https://cloud.google.com/run/docs/about-concurrency",
        "By default each Cloud Run instance can receive up to 80 requests at the same time; "
        "you can increase this to a maximum of 1000.",
    ),
    "functions_max_instances_default": Limit(
        3000,
        "instances per function",
        "https://cloud.google.com/functions/1stgendocs/configuring/max-instances",
        "If you don't specify a limit, Cloud Run functions sets a default of 3000.",
        note="the stored page is the 1st gen one; the gen2 (Cloud Run) per-region instance "
        "quota could not be confirmed from the stored docs",
    ),
    "pubsub_push_rate": Limit(
        math.nan,
        "push requests/s (adaptive)",
        "https://cloud.google.com/pubsub/docs/push",
        "Pub/Sub dynamically adjusts the rate of push requests based on the rate at which it "
        "receives success responses.",
        confirmed=False,
        note="no number is published; the slow-start ramp (how fast the push window grows "
        "from a cold subscription) could not be confirmed from the stored docs",
    ),
    "firestore_sequential_index_writes": Limit(
        500,
        "writes/s per sequential indexed field (x shards)",
        "https://firebase.google.com/docs/firestore/solutions/shard-timestamp",
        "If a collection contains documents with sequential indexed values, Cloud Firestore "
        "limits the write rate to 500 writes per second. [...] a shard field [...] increases "
        "the write limit of the collection to 500*n",
    ),
    "firestore_ramp": Limit(
        500,
        "ops/s, then +50% every 5 min",
        "https://docs.cloud.google.com/firestore/docs/resolve-latency",
        'Latency cause: "Sustained traffic exceeding the 500-50-5 rule."',
        note="a cold collection jumping to N writes in one tick can see latency until "
        "Firestore splits; steady every-minute traffic is warm",
    ),
    "cloudsql_max_connections_f1_micro": Limit(
        25,
        "connections (db-f1-micro default)",
        "https://cloud.google.com/sql/docs/postgres/faq",
        "Cloud SQL for PostgreSQL connection limits: 0.6 (db-f1-micro): 25",
        note="the defaults of larger tiers could not be read from the stored docs; "
        "max_connections is a database flag (set it, and database_max_connections in tfvars)",
    ),
    "scheduler_jobs_per_region": Limit(
        5000,
        "jobs per project and region (default 1000)",
        "https://cloud.google.com/scheduler/quotas",
        "Number of jobs (per region): Default: 1000 Max: 5000",
    ),
}


@dataclass(frozen=True)
class Price:
    """A published unit price (USD) and its free allowance."""

    usd: float
    per: str
    url: str
    published: str
    free_per_month: float = 0.0
    confirmed: bool = True


PRICES: dict[str, Price] = {
    "tasks_op": Price(
        0.40 / 1e6,
        "billable operation (API call or push delivery attempt)",
        "https://cloud.google.com/tasks/pricing",
        "First 1 Million: Free; Up to 5 billion: $0.40 per million",
        free_per_month=1e6,
    ),
    "run_vcpu_second": Price(
        0.000024,
        "vCPU-second (CPU allocated during requests, Tier 1)",
        "https://cloud.google.com/run/pricing",
        "$0.00002400 / vCPU-second beyond free tier; First 180,000 vCPU-seconds free per month",
        free_per_month=180_000,
    ),
    "run_gib_second": Price(
        0.0000025,
        "GiB-second",
        "https://cloud.google.com/run/pricing",
        "First 360,000 GiB-seconds free per month (the $0.0000025 figure is from a secondary "
        "source, cloudwebschool.com's calculator)",
        free_per_month=360_000,
        confirmed=False,
    ),
    "run_request": Price(
        0.40 / 1e6,
        "request",
        "https://cloud.google.com/run/pricing",
        "2 million requests free per month (the $0.40 per million figure is from a secondary "
        "source, cloudwebschool.com's calculator)",
        free_per_month=2e6,
        confirmed=False,
    ),
    "pubsub_tib": Price(
        40.0,
        "TiB of throughput (publish + delivery)",
        "https://cloud.google.com/pubsub/pricing",
        "$40 per TiB; first 10 GiB free (transcribed by api-evangelist; the per-request "
        "minimum billed size could not be confirmed from the stored docs, 1 KB assumed)",
        free_per_month=10 / 1024,
        confirmed=False,
    ),
    "firestore_read": Price(
        0.06 / 1e5,
        "document read",
        "https://cloud.google.com/firestore/pricing",
        "free: 50,000 reads per day; $0.06 per 100,000 (multi-region, 2018 figure from a "
        "secondary source; the current regional price could not be confirmed)",
        free_per_month=50_000 * 30,
        confirmed=False,
    ),
    "firestore_write": Price(
        0.18 / 1e5,
        "document write",
        "https://cloud.google.com/firestore/pricing",
        "free: 20,000 writes per day; $0.18 per 100,000 (multi-region, 2018 figure from a "
        "secondary source; the current regional price could not be confirmed)",
        free_per_month=20_000 * 30,
        confirmed=False,
    ),
    "scheduler_job_month": Price(
        0.10,
        "job per month",
        "https://cloud.google.com/scheduler/pricing",
        "not in the stored docs: $0.10 per job per month is the commonly quoted figure",
        confirmed=False,
    ),
}


# --------------------------------------------------------------------------- local measurements


@dataclass(frozen=True)
class Measured:
    """CPU milliseconds per due message of our code, from bench/results (file#key each)."""

    select_ms: float
    fanout_fixed_ms: float
    fanout_per_task_ms: float
    ledger_fixed_ms: float
    ledger_per_task_ms: float
    fanout_latency_ms: float
    # The results function, per outcome message (one per task: the worker kit reports the final
    # outcome only unless report_started is on).
    results_ms: float = 0.0
    sources: dict[str, str] = field(default_factory=dict)

    def fanout_ms(self, tasks: int) -> float:
        """fanout CPU for one due message with ``tasks`` sources."""
        return self.fanout_fixed_ms + self.fanout_per_task_ms * tasks

    def ledger_ms(self, tasks: int) -> float:
        """PostgreSQL CPU for one due message with ``tasks`` sources."""
        return self.ledger_fixed_ms + self.ledger_per_task_ms * tasks


def _line(one: float, two: float) -> tuple[float, float]:
    """Fixed and per-task parts of a cost measured at 1 and at 2 sources.

    The line through both points, unless its fixed part would be negative: the two runs then
    measured different work (the 1-source run predates outcome reporting, whose ledger writes
    land in PostgreSQL's CPU), and the line goes through the newer 2-source point and the origin
    instead, never charging less than either measurement.
    """
    per_task = max(two - one, 0.0)
    fixed = one - per_task
    if fixed < 0:
        return 0.0, two / 2
    return fixed, per_task


def load_measured(results: Path = RESULTS) -> Measured:
    """Read our per-message CPU from the committed benchmark results.

    Two runs measured it: ``pipeline.json`` (1 source per subscription) and ``burst.json``
    (2 sources). A straight line through the two splits each cost into a per-message and a
    per-task part. select's cost does not depend on sources: the larger run (burst) is used.
    """
    pipeline = json.loads((results / "pipeline.json").read_text())
    burst = json.loads((results / "burst.json").read_text())
    one = pipeline["rounds"][0]["pipeline"]
    one_cpu = one["cpu"]["cpu_ms_per_due_message"]
    two_cpu = burst["cpu"]["cpu_ms_per_due_message"]
    if one["tasks"] != one["cpu"]["units"] or burst["sources"] != 2:
        raise ValueError("expected pipeline.json at 1 source and burst.json at 2 sources")
    fanout = _line(one_cpu["fn-fanout"], two_cpu["fn-fanout"])
    # The burst's collector stub reports one final outcome per task (started off, the kit's
    # default), so the results function's CPU per due message over tasks per due is per message.
    results_ms = two_cpu["fn-results"] * burst["due"] / burst["tasks"]
    ledger = _line(one_cpu["postgres"], two_cpu["postgres"])
    key = "cpu.cpu_ms_per_due_message"
    first = "bench/results/pipeline.json#rounds[0].pipeline"
    return Measured(
        select_ms=two_cpu["fn-select"],
        fanout_fixed_ms=fanout[0],
        fanout_per_task_ms=fanout[1],
        ledger_fixed_ms=ledger[0],
        ledger_per_task_ms=ledger[1],
        fanout_latency_ms=one["fanout_median_ms"],
        results_ms=results_ms,
        sources={
            "select_ms": f"bench/results/burst.json#{key}.fn-select",
            "fanout_ms(1 source)": f"{first}.{key}.fn-fanout",
            "fanout_ms(2 sources)": f"bench/results/burst.json#{key}.fn-fanout",
            "ledger_ms(1 source)": f"{first}.{key}.postgres",
            "ledger_ms(2 sources)": f"bench/results/burst.json#{key}.postgres",
            "fanout_latency_ms": f"{first}.fanout_median_ms",
            "results_ms": f"bench/results/burst.json#{key}.fn-results x due / tasks",
        },
    )


# --------------------------------------------------------------------------- assumptions, sizing


@dataclass(frozen=True)
class Assumptions:
    """What is neither published nor measured here. Every figure is a guess to revisit."""

    # Wall time of one fanout request in production: our CPU plus managed-service round trips
    # (1 Firestore get, ~3 ledger round trips, the task creates in parallel). The local median
    # (bench/results/pipeline.json, 21.5 ms) had every service on loopback; production adds
    # network: 60 ms is an assumption, not a measurement.
    fanout_io_ms: float = 60.0
    # Tick published -> select running, and Pub/Sub publish -> push delivered (seconds).
    pipeline_latency_s: float = 2.0
    # Function instances have 1 vCPU (terraform/variables.tf functions.*.cpu = "1").
    instance_vcpus: float = 1.0
    fanout_memory_gib: float = 0.5
    # Pub/Sub bytes billed per message (publish + push delivery each), assumed 1 KB minimum.
    pubsub_bytes_per_message: int = 1000
    # Outcome messages per task reported by collectors: the final one (docs/worker-kit.md:
    # ``started`` is off by default). A retried task adds one ``failed`` report per failed
    # attempt; the model takes every task to succeed at its first attempt.
    results_messages_per_task: float = 1.0
    # Wall time of one results request beyond its CPU: the ledger transaction (lock the run row,
    # update the dispatch, maybe complete the run: ~4 round trips) and, once per run, the
    # run-completed publish. An assumption, like fanout_io_ms.
    results_io_ms: float = 30.0
    # The outcomes of one tick must be recorded before the next tick's arrive (steady state).
    results_window_s: float = 60.0
    # Source kinds the tasks spread over (app.toml has 4); a subscription's sources are assumed
    # to be of distinct kinds, so the busiest kind carries N x ceil(S / kinds) tasks.
    source_kinds: int = 4


@dataclass(frozen=True)
class Deployment:
    """The knobs Terraform and app.toml set, as the model sees them."""

    name: str
    fanout_max_instances: int
    fanout_concurrency: int
    # One select instance per tick; ``select_parallel_ticks`` ticks (one per group of
    # dispatcher shards, the tick's ``shard`` field) run on that many instances at once.
    select_parallel_ticks: int
    firestore_shards: int
    # Queue rate of the busiest kind in tasks/s (its max_dispatches_per_second total) and its
    # shards; each shard is capped at 500/s.
    kind_rate: float
    kind_shards: int
    jitter_seconds: float
    pool_max_size: int
    database_functions_instances: int  # Σ max_instances over the functions using the ledger
    database_max_connections: int
    database_reserved_connections: int
    database_vcpus: float
    # The results function (outcomes into the ledger); its instances are in the Σ above.
    results_max_instances: int = 2
    results_concurrency: int = 1
    # Connections outside the shared pool size: deliver's instances x its pool of 1.
    database_fixed_connections: int = 0


@dataclass
class Outcome:
    """One (N, S, deployment) evaluated."""

    deployment: str
    due: int
    sources: int
    tasks: int
    select_seconds: float
    firestore_write_seconds: float
    fanout_seconds: float
    ledger_seconds: float
    tasks_api_share_of_quota: float
    created_seconds: float
    busiest_kind_tasks: int
    kind_dispatch_rate: float
    dispatched_seconds: float
    shards_needed_for_jitter_window: int
    result_messages: int
    results_seconds: float
    results_within_window: bool
    connections: int
    connection_budget: int
    created_binding: str
    dispatch_binding: str
    created_within_60s: bool
    dispatched_within_jitter_window: bool
    monthly_usd: dict[str, float]
    monthly_usd_total: float


def _cost(
    due: int, sources: int, measured: Measured, assume: Assumptions, ticks: int
) -> dict[str, float]:
    """Monthly cost when each of ``due`` subscriptions runs ``ticks`` times a month."""
    tasks = due * sources

    def bill(price: Price, units: float) -> float:
        return max(units - price.free_per_month, 0.0) * price.usd

    per_msg_s = max(
        measured.fanout_ms(sources) / 1000,
        (measured.fanout_ms(sources) + assume.fanout_io_ms) / 1000,
    )
    fanout_vcpu_s = due * per_msg_s * assume.instance_vcpus * ticks
    select_vcpu_s = due * measured.select_ms / 1000 * ticks
    outcomes = tasks * assume.results_messages_per_task
    messages = (due + outcomes) * ticks
    # Charged like fanout: every message for its CPU plus its I/O wait (an upper bound).
    results_vcpu_s = (
        outcomes * (measured.results_ms + assume.results_io_ms) / 1000 * assume.instance_vcpus
    ) * ticks
    tib = messages * 2 * assume.pubsub_bytes_per_message / 2**40
    return {
        "cloud_tasks": round(bill(PRICES["tasks_op"], 2 * tasks * ticks), 2),
        "functions_cpu": round(
            bill(PRICES["run_vcpu_second"], fanout_vcpu_s + select_vcpu_s + results_vcpu_s), 2
        ),
        "functions_memory": round(
            bill(
                PRICES["run_gib_second"],
                (fanout_vcpu_s + results_vcpu_s) * assume.fanout_memory_gib,
            ),
            2,
        ),
        "functions_requests": round(bill(PRICES["run_request"], messages), 2),
        "pubsub": round(bill(PRICES["pubsub_tib"], tib), 2),
        # select reads each due document and advances it; fanout reads it again.
        "firestore_reads": round(bill(PRICES["firestore_read"], 2 * due * ticks), 2),
        "firestore_writes": round(bill(PRICES["firestore_write"], due * ticks), 2),
    }


def _per_instance_rate(cpu_ms: float, io_ms: float, concurrency: int, vcpus: float) -> float:
    """Requests per second one instance sustains: ``concurrency`` requests in flight, each
    ``cpu_ms + io_ms`` long, but never more than its vCPUs can run."""
    if cpu_ms <= 0:
        return math.inf
    return min(concurrency / ((cpu_ms + io_ms) / 1000), vcpus * 1000 / cpu_ms)


def evaluate(
    due: int,
    sources: int,
    deployment: Deployment,
    measured: Measured,
    assume: Assumptions = Assumptions(),
    runs_per_month: int = RUNS_PER_SUBSCRIPTION_PER_MONTH,
) -> Outcome:
    """Timings, sizes, the binding limit and the cost of one tick of ``due`` x ``sources``."""
    tasks = due * sources
    queue_cap = LIMITS["tasks_dispatch_per_queue"].value
    select_s = due * measured.select_ms / 1000 / deployment.select_parallel_ticks
    firestore_s = due / (
        LIMITS["firestore_sequential_index_writes"].value * deployment.firestore_shards
    )
    request_s = (measured.fanout_ms(sources) + assume.fanout_io_ms) / 1000
    per_instance = min(
        deployment.fanout_concurrency / request_s,
        assume.instance_vcpus * 1000 / measured.fanout_ms(sources),
    )
    fanout_s = due / (per_instance * deployment.fanout_max_instances)
    ledger_s = due * measured.ledger_ms(sources) / 1000 / deployment.database_vcpus
    api_share = tasks / LIMITS["tasks_api_requests_per_minute"].value
    stages = {
        "select CPU (one instance per tick)": select_s,
        "Firestore sequential-index writes": firestore_s,
        "fanout instances x concurrency": fanout_s,
        "database CPU": ledger_s,
    }
    created_binding = max(stages, key=lambda k: stages[k])
    created = assume.pipeline_latency_s + stages[created_binding]
    busiest = due * math.ceil(sources / assume.source_kinds)
    rate = min(deployment.kind_rate, queue_cap * deployment.kind_shards)
    drain = busiest / rate
    dispatched = max(deployment.jitter_seconds, created, drain)
    if drain > max(deployment.jitter_seconds, created):
        dispatch_binding = (
            "queue limit (500/s per shard)"
            if deployment.kind_rate > queue_cap * deployment.kind_shards
            else "configured kind rate"
        )
    elif created > deployment.jitter_seconds:
        dispatch_binding = f"task creation ({created_binding})"
    else:
        dispatch_binding = "none (every task dispatches at its jitter time)"
    needed = math.ceil(busiest / deployment.jitter_seconds / queue_cap)
    result_messages = math.ceil(tasks * assume.results_messages_per_task)
    results_s = result_messages / (
        _per_instance_rate(
            measured.results_ms,
            assume.results_io_ms,
            deployment.results_concurrency,
            assume.instance_vcpus,
        )
        * deployment.results_max_instances
    )
    connections = (
        deployment.database_functions_instances * deployment.pool_max_size
        + deployment.database_fixed_connections
    )
    budget = deployment.database_max_connections - deployment.database_reserved_connections
    monthly = _cost(due, sources, measured, assume, runs_per_month)
    return Outcome(
        deployment=deployment.name,
        due=due,
        sources=sources,
        tasks=tasks,
        select_seconds=round(select_s, 2),
        firestore_write_seconds=round(firestore_s, 2),
        fanout_seconds=round(fanout_s, 2),
        ledger_seconds=round(ledger_s, 2),
        tasks_api_share_of_quota=round(api_share, 4),
        created_seconds=round(created, 1),
        busiest_kind_tasks=busiest,
        kind_dispatch_rate=rate,
        dispatched_seconds=round(dispatched, 1),
        shards_needed_for_jitter_window=needed,
        result_messages=result_messages,
        results_seconds=round(results_s, 1),
        results_within_window=results_s <= assume.results_window_s,
        connections=connections,
        connection_budget=budget,
        created_binding=created_binding,
        dispatch_binding=dispatch_binding,
        created_within_60s=created <= 60 and connections <= budget,
        dispatched_within_jitter_window=dispatched <= deployment.jitter_seconds,
        monthly_usd=monthly,
        monthly_usd_total=round(sum(monthly.values()), 2),
    )


# --------------------------------------------------------------------------- alternatives


def scheduler_per_subscription(due: int, sources: int, measured: Measured) -> dict[str, Any]:
    """One Cloud Scheduler job per subscription, publishing its due message directly.

    No select and no Firestore query; fanout is unchanged. Every subscription is a job whether
    due or not: the model counts only the due ones (the best case for this design).
    """
    per_region = LIMITS["scheduler_jobs_per_region"].value
    regions = math.ceil(due / per_region)
    return {
        "design": "one Cloud Scheduler job per subscription",
        "jobs": due,
        "regions_needed_at_max_quota": regions,
        "feasible_in_one_region": due <= per_region,
        "binding": f"Cloud Scheduler jobs per region ({int(per_region)} at the maximum quota)",
        "scheduler_usd_per_month": round(due * PRICES["scheduler_job_month"].usd, 2),
        "note": "creates and dispatch are as for the dispatcher (same fanout); job CRUD on "
        "every subscription change uses the 500 write requests/min quota",
        "fanout_cpu_ms_per_message": round(measured.fanout_ms(sources), 2),
    }


def single_scanner(
    due: int, sources: int, measured: Measured, assume: Assumptions = Assumptions()
) -> dict[str, Any]:
    """One function instance that reads every subscription and creates every task itself.

    Its CPU per task is at least fanout's per-task part (the same create and ledger work), on
    one instance: it cannot use more than its vCPUs however many threads it runs.
    """
    cpu_s = (due * measured.fanout_fixed_ms + due * sources * measured.fanout_per_task_ms) / 1000
    seconds = assume.pipeline_latency_s + cpu_s / assume.instance_vcpus
    return {
        "design": "one function scanning every subscription each minute",
        "seconds_tick_to_last_task": round(seconds, 1),
        "within_60s": seconds <= 60,
        "binding": "one instance's CPU (all creates in one process)",
        "firestore_reads_per_tick": due,
        # Every minute of the month, whether anything is due or not.
        "firestore_read_usd_per_month": round(due * 30 * 24 * 60 * PRICES["firestore_read"].usd, 2),
        "note": "reads at least every due document each minute (all documents in fact); "
        "a tick longer than 60 s overlaps the next one",
    }


# --------------------------------------------------------------------------- deployments


def current_production() -> Deployment:
    """Production before this model: terraform production.tfvars and app.production.toml as
    they were (fanout 50 x 1, one select tick, rss 200/s unsharded, pool 8, no budget check)."""
    return Deployment(
        name="production before sizing",
        fanout_max_instances=50,
        fanout_concurrency=1,
        select_parallel_ticks=1,
        firestore_shards=32,
        kind_rate=200.0,
        kind_shards=1,
        jitter_seconds=30,
        pool_max_size=8,
        database_functions_instances=50 + 2 + 2 + 2,
        database_max_connections=400,
        database_reserved_connections=20,
        database_vcpus=4,
    )


# The other functions with the ledger pool, at their tfvars max_instances (not load-bound: a
# test checks they equal production.tfvars), and deliver's 10 instances x its pool of 1.
OTHER_LEDGER_INSTANCES = {"maintenance": 2, "sync": 2, "plan-deliveries": 5}
DELIVER_CONNECTIONS = 10 * 1


def sized_for(due: int, sources: int, measured: Measured, assume: Assumptions) -> Deployment:
    """The smallest deployment the model finds for ``due`` x ``sources`` inside the minute.

    Target: every task created by the end of the jitter window (so the last ones still
    dispatch inside it). fanout: concurrency = the requests one vCPU keeps busy while the others
    wait on I/O (CPU-bound beyond that); instances = enough for the due messages by the target.
    select: one tick per dispatcher shard once one instance is not enough (the tick's ``shard``
    field). Firestore: enough shards for the indexed next_run_at writes. Queues: enough shards
    for the busiest kind to drain within the window. Database: one pooled connection per
    concurrent request; vCPUs (even, as Cloud SQL custom tiers) for the ledger work by the target.
    results: the outcomes of one tick recorded within ``results_window_s`` (before the next
    tick's arrive), its concurrency capped by the shared pool size.
    """
    jitter = 30.0
    target = jitter - assume.pipeline_latency_s
    fanout_ms = measured.fanout_ms(sources)
    request_ms = fanout_ms + assume.fanout_io_ms
    concurrency = max(1, math.ceil(request_ms / fanout_ms))
    per_instance = min(concurrency / (request_ms / 1000), 1000 / fanout_ms)
    instances = math.ceil(due / per_instance / target)
    index_rate = LIMITS["firestore_sequential_index_writes"].value
    firestore_shards = max(32, 2 ** math.ceil(math.log2(due / index_rate / target)))
    one_select = due * measured.select_ms / 1000 <= target
    busiest = due * math.ceil(sources / assume.source_kinds)
    shards = math.ceil(busiest / jitter / LIMITS["tasks_dispatch_per_queue"].value)
    db_vcpus = 2 * math.ceil(due * measured.ledger_ms(sources) / 1000 / target / 2)
    pool = concurrency
    # The results function takes what one vCPU keeps busy while the others wait on the ledger,
    # up to the shared pool size (each request holds one connection).
    results_ms = measured.results_ms
    results_concurrency = (
        min(pool, max(1, math.ceil((results_ms + assume.results_io_ms) / results_ms)))
        if results_ms > 0
        else 1
    )
    results_rate = _per_instance_rate(
        measured.results_ms, assume.results_io_ms, results_concurrency, assume.instance_vcpus
    )
    outcomes = due * sources * assume.results_messages_per_task
    results_instances = max(1, math.ceil(outcomes / results_rate / assume.results_window_s))
    functions_instances = instances + results_instances + sum(OTHER_LEDGER_INSTANCES.values())
    reserve = 20
    return Deployment(
        name=f"sized for {due:,} x {sources}",
        fanout_max_instances=instances,
        fanout_concurrency=concurrency,
        select_parallel_ticks=1 if one_select else firestore_shards,
        firestore_shards=firestore_shards,
        kind_rate=busiest / jitter,
        kind_shards=shards,
        jitter_seconds=jitter,
        pool_max_size=pool,
        database_functions_instances=functions_instances,
        database_max_connections=max(
            400,
            100 * math.ceil((functions_instances * pool + DELIVER_CONNECTIONS + reserve) / 100),
        ),
        database_reserved_connections=reserve,
        database_vcpus=max(db_vcpus, 2),
        results_max_instances=results_instances,
        results_concurrency=results_concurrency,
        database_fixed_connections=DELIVER_CONNECTIONS,
    )


# --------------------------------------------------------------------------- main


def run(measured: Measured, assume: Assumptions = Assumptions()) -> dict[str, Any]:
    """Every scenario: 10k / 100k / 1M due x 1..5 sources, current and sized deployments."""
    rows: list[dict[str, Any]] = []
    current = current_production()
    for due in (10_000, 100_000, 1_000_000):
        for sources in range(1, 6):
            sized = sized_for(due, sources, measured, assume)
            for deployment in (current, sized):
                outcome = evaluate(due, sources, deployment, measured, assume)
                rows.append({**asdict(outcome), "sizing": asdict(deployment)})
    headline = sized_for(100_000, 3, measured, assume)
    return {
        "benchmark": "capacity_model",
        "measured": asdict(measured),
        "assumptions": asdict(assume),
        "limits": {k: asdict(v) for k, v in LIMITS.items()},
        "prices": {k: asdict(v) for k, v in PRICES.items()},
        "scenarios": rows,
        "headline_100k_x3": {
            "sized": asdict(evaluate(100_000, 3, headline, measured, assume)),
            "current": asdict(evaluate(100_000, 3, current, measured, assume)),
            "sizing": asdict(headline),
        },
        "alternatives": [
            {
                "due": due,
                "sources": sources,
                "scheduler_per_subscription": scheduler_per_subscription(due, sources, measured),
                "single_scanner": single_scanner(due, sources, measured, assume),
            }
            for due in (10_000, 100_000, 1_000_000)
            for sources in (1, 3, 5)
        ],
    }


def _print(result: dict[str, Any]) -> None:
    header = (
        f"{'due':>9} {'S':>1} {'deployment':<26} {'created':>8} {'dispatched':>10} "
        f"{'fanout inst x conc':>18} {'select ticks':>12} {'shards':>6} {'conn/budget':>11} "
        f"{'binds (create / dispatch)':<60} {'USD/month':>10}"
    )
    print(header)
    for row in result["scenarios"]:
        sizing = row["sizing"]
        ok = "ok" if row["created_within_60s"] else "LATE"
        print(
            f"{row['due']:>9,} {row['sources']:>1} {row['deployment'][:26]:<26} "
            f"{row['created_seconds']:>6.1f}s{ok[0]} {row['dispatched_seconds']:>9.1f}s "
            f"{sizing['fanout_max_instances']:>11} x {sizing['fanout_concurrency']:<4} "
            f"{sizing['select_parallel_ticks']:>12} {sizing['kind_shards']:>6} "
            f"{row['connections']:>5}/{row['connection_budget']:<5} "
            f"{(row['created_binding'] + ' / ' + row['dispatch_binding'])[:60]:<60} "
            f"{row['monthly_usd_total']:>10,.0f}"
        )
    head = result["headline_100k_x3"]["sized"]
    print(
        f"\n100,000 x 3 sized: created {head['created_seconds']} s (within 60 s: "
        f"{head['created_within_60s']}), dispatched {head['dispatched_seconds']} s (within the "
        f"{result['headline_100k_x3']['sizing']['jitter_seconds']:g} s jitter window: "
        f"{head['dispatched_within_jitter_window']}); binds: {head['created_binding']} / "
        f"{head['dispatch_binding']}"
    )
    sizing = result["headline_100k_x3"]["sizing"]
    print(
        f"results: {head['result_messages']:,} outcome messages per tick in "
        f"{head['results_seconds']} s on {sizing['results_max_instances']} instances x "
        f"{sizing['results_concurrency']} (within the window: {head['results_within_window']}); "
        f"ledger connections {head['connections']} of {head['connection_budget']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Compute every scenario, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    result = run(load_measured())
    args.output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    _print(result)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
