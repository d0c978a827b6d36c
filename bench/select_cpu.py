"""select's own CPU per due message, in one process, on the real Firestore and Pub/Sub emulators.

The burst (:mod:`bench.burst`) measures select inside the whole stack, where two cores are
shared by every emulator, fanout's pushes and other people's work. This drives the real function
(``functions/select/main.py``, its real dependencies from :mod:`shared.wiring`: the Firestore
store, the Pub/Sub publisher, the digest path) through functions-framework's
``create_app(...).test_client()`` with emulator-shaped tick pushes, and reads this process's CPU
time (``time.process_time``: every thread, the shard pool, the publisher's batch thread and
gRPC's Python callbacks included). The emulators run in their own processes (gcloud, Java), so
their CPU is not counted; nothing subscribes to ``dispatcher-due`` here, so nothing fans out.

Each round seeds ``--due`` subscriptions due at one slot (2 sources each, rss and news-api, as
in the burst; seeding is not timed), then posts one tick for that slot: select reads every due
document, publishes one due message with its snapshot per document and advances it. Between
rounds the emulator's database is wiped, so every round's queries walk the same collection.
The figure is CPU per due message published, and the Firestore documents select reported read
per due (the ``read`` of its result: 1.0 when nothing is read twice).

Run: ``.venv/bin/python -m bench.select_cpu [--due 2000] [--rounds 3]``. For a profile, start it
with ``--settle 3``, attach ``py-spy record --gil -r 400 -f raw -o out.txt --pid PID`` when it
prints "warmed up (pid PID)", and fold the stacks with ``python -m bench.select_cpu --fold
out.txt``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import inprocess

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "dispatcher-local"
SLOT = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
SOURCES = [
    {"id": "feed", "kind": "rss", "params": {"url": "https://example.com/feed.xml"}},
    {"id": "query", "kind": "news-api", "params": {"q": "acme"}},
]

# Stack → component: the first rule with a marker anywhere in the stack (``--fold``). Whole
# stacks, not innermost frames: protobuf, gRPC and api-core frames belong to whichever of our
# calls (the due query, the advance, the publish) is below them.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("garbage collector", ("<gc>",)),
    ("logging (JSON lines)", ("_log_plan", "shared/logs.py", "logging/__init__.py")),
    (
        "Pub/Sub publish",
        ("shared/dal/pubsub_publisher.py", "google/cloud/pubsub_v1", "google/pubsub_v1"),
    ),
    ("Firestore advance (BatchWrite)", ("_advance_chunk", "advance_many")),
    (
        "Firestore due query (stream, document → dict)",
        ("due_page", "firestore_store.py", "google/cloud/firestore"),
    ),
    ("snapshot: dumps + due.v1 check", ("_encode",)),
    ("subscription parse (from_document)", ("from_document",)),
    ("plan (plan_tick) and snapshot dict", ("plan_tick", "_snapshot")),
    (
        "framework + handler (tick envelope, tick.v1 check)",
        ("werkzeug/", "flask/", "functions_framework/", "shared/handler.py", "click/"),
    ),
    (
        "gRPC / thread-pool threads",
        ("concurrent/futures", "threading.py", "grpc/", "contextvars"),
    ),
    ("select use case (rest)", ("shared/usecases/select_due.py", "select_digests.py")),
    ("bench driver", ("bench/select_cpu.py",)),
]


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def tick_push(slot: datetime, message_id: str) -> dict[str, Any]:
    """An emulator-shaped push of a tick naming ``slot`` (as a replayed scheduler job sends)."""
    data = json.dumps({"time": rfc3339(slot)}).encode()
    published = rfc3339(datetime.now(UTC))
    return {
        "message": {
            "attributes": {},
            "data": base64.b64encode(data).decode(),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": f"projects/{PROJECT}/subscriptions/dispatcher-ticks-select",
    }


def _start_emulators(state: Path) -> tuple[list[Any], dict[str, str]]:
    from emulators.process import ManagedProcess, free_port, http_ready

    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise SystemExit("gcloud is not on PATH: the Pub/Sub and Firestore emulators need it")
    pubsub, firestore = free_port(), free_port()
    (state / "pubsub").mkdir(parents=True, exist_ok=True)
    processes = [
        ManagedProcess(
            name="pubsub",
            argv=[
                gcloud,
                "beta",
                "emulators",
                "pubsub",
                "start",
                f"--host-port=127.0.0.1:{pubsub}",
                f"--project={PROJECT}",
                f"--data-dir={state / 'pubsub'}",
            ],
            log_path=state / "pubsub.log",
            ready=http_ready(f"http://127.0.0.1:{pubsub}/"),
            startup_timeout=120,
        ),
        ManagedProcess(
            name="firestore",
            argv=[gcloud, "emulators", "firestore", "start", f"--host-port=127.0.0.1:{firestore}"],
            log_path=state / "firestore.log",
            ready=http_ready(f"http://127.0.0.1:{firestore}/"),
            startup_timeout=120,
        ),
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.wait_ready()
    env = {
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{pubsub}",
        "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{firestore}",
        "DISPATCHER_PUSH_AUTH_VERIFY": "false",
        # As in bench/burst.py: on this shared host the Firestore emulator's collection walks
        # can outlast the production timeout (10 s a call), and a retried tick is not measured.
        "DISPATCHER_DEPENDENCY_TIMEOUT_SECONDS": "60",
        "DISPATCHER_DEPENDENCY_RETRY_BUDGET_SECONDS": "120",
    }
    return processes, env


def _seed(client: Any, prefix: str, count: int, shard_count: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.core import subscription_doc

    docs = [
        (
            f"{prefix}{i:06d}",
            subscription_doc(
                f"{prefix}{i:06d}",
                schedule={"every": 300},
                start=SLOT,
                shard_count=shard_count,
                sources=SOURCES,
                jitter_seconds=0,
            ),
        )
        for i in range(count)
    ]

    def seed_chunk(chunk: list[tuple[str, dict[str, Any]]]) -> None:
        batch = client.batch()
        for doc_id, data in chunk:
            batch.set(client.collection("subscriptions").document(doc_id), data)
        batch.commit(timeout=120)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(seed_chunk, [docs[i : i + 500] for i in range(0, len(docs), 500)]))


def _wipe(firestore_host: str) -> None:
    import requests

    url = f"http://{firestore_host}/emulator/v1/projects/{PROJECT}/databases/(default)/documents"
    requests.delete(url, timeout=60).raise_for_status()


def run(due: int, rounds: int, warmup: int, settle: float = 0.0) -> dict[str, Any]:
    """Start the two emulators, drive select a tick per round, return the figures."""
    state = Path(tempfile.mkdtemp(prefix="bench-select-cpu-"))
    processes, env = _start_emulators(state)
    try:
        os.environ.update(env)
        import google.cloud.pubsub_v1 as pubsub_v1
        from functions_framework import create_app
        from google.cloud import firestore

        from shared.config import get_settings

        settings = get_settings()
        admin = pubsub_v1.PublisherClient()
        for topic in ("dispatcher-due", "dispatcher-ticks-dlq"):
            admin.create_topic(name=settings.topic_path(topic))
        seeder = firestore.Client(project=PROJECT)

        app = create_app(target="handle", source=str(ROOT / "functions/select/main.py"))  # type: ignore[no-untyped-call]
        client = app.test_client()
        from shared.wiring import select_dependencies

        def prepare(count: int, name: str) -> bytes:
            _wipe(env["FIRESTORE_EMULATOR_HOST"])
            _seed(seeder, f"{name}-", count, settings.shard_count)
            # Encoded before the clock starts: what is timed is the request, not its making.
            return json.dumps(tick_push(SLOT, name)).encode()

        def tick(body: bytes, count: int) -> tuple[float, float, int]:
            reads_before = _reads[0]
            cpu0 = time.process_time()
            began = time.perf_counter()
            response = client.post("/", data=body, content_type="application/json")
            wall = time.perf_counter() - began
            cpu = time.process_time() - cpu0
            if response.status_code != 200 or response.text != "acked":
                raise RuntimeError(f"select answered {response.status_code} {response.text}")
            return cpu * 1000 / count, wall, _reads[0] - reads_before

        _count_reads(select_dependencies().store)
        tick(prepare(warmup, "warm"), warmup)
        per_round: list[float] = []
        walls: list[float] = []
        reads: list[int] = []
        for r in range(rounds):
            body = prepare(due, f"r{r}")
            if r == 0:
                # After the first round's seeding: a profiler attached now sees select only.
                print(f"warmed up (pid {os.getpid()})", file=sys.stderr, flush=True)
                time.sleep(settle)
            cpu_ms, wall, read = tick(body, due)
            per_round.append(round(cpu_ms, 3))
            walls.append(round(wall, 2))
            reads.append(read)
            print(
                f"round {r + 1}: {cpu_ms:.3f} ms CPU per due message, {wall:.1f} s, "
                f"{read} documents read for {due} due",
                file=sys.stderr,
            )
        admin.transport.close()
        seeder.close()  # type: ignore[no-untyped-call]
        return {
            "benchmark": "select_cpu",
            "due_per_tick": due,
            "sources": len(SOURCES),
            "shards": settings.shard_count,
            "page_size": settings.firestore_page_size,
            "cpu_ms_per_due_rounds": per_round,
            "cpu_ms_per_due": round(statistics.median(per_round), 3),
            "tick_wall_s_rounds": walls,
            "firestore_reads_per_due_rounds": [round(n / due, 4) for n in reads],
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "measured_at": rfc3339(datetime.now(UTC)),
        }
    finally:
        for process in processes:
            process.stop()
        shutil.rmtree(state, ignore_errors=True)


_reads = [0]


def _count_reads(store: Any) -> None:
    """Count the documents the due query streams (what select's ``read`` reports, measured
    below it): wraps the store's ``_stream``, the one place every query's snapshots pass."""
    inner = store._stream

    def counted(query: Any) -> Any:
        for snapshot in inner(query):
            _reads[0] += 1
            yield snapshot

    store._stream = counted


def fold(path: Path) -> dict[str, float]:
    """Shares of py-spy's raw (collapsed) samples by component (:data:`CATEGORIES`)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        if "_seed" in stack or "seed_chunk" in stack or "_wipe" in stack:
            continue  # the driver preparing a round, outside the timed request
        if "ManagedProcess.stop" in stack:
            continue  # the teardown, after the timed request
        total += int(n)
        category = next(
            (name for name, keys in CATEGORIES if any(k in stack for k in keys)), "other"
        )
        counts[category] += int(n)
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()} if total else {}


def main(argv: list[str] | None = None) -> int:
    """Run the rounds (or fold a profile); print the figures and write them with --output."""
    return inprocess.main(
        argv,
        description=(__doc__ or "").split("\n\n")[0],
        count_flag="--due",
        count_help="due subscriptions per tick",
        default_count=2000,
        default_warmup=300,
        run=run,
        fold=fold,
    )


if __name__ == "__main__":
    raise SystemExit(main())
