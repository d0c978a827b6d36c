"""fanout's own CPU per due message, in one process, on the real Cloud Tasks emulator and ledger.

The burst (:mod:`bench.burst`) measures fanout inside the whole stack, where two cores are shared
by every emulator and the spread from run to run is large. This drives the real function
(``functions/fanout/main.py``) through functions-framework's ``create_app(...).test_client()``
with emulator-shaped push requests of scheduled due messages (the snapshot select puts in them,
2 sources each: rss and news-api), one after the other, and reads this process's CPU time
(``time.process_time``: every thread, the create pool's included). The Cloud Tasks emulator and
PostgreSQL run in their own processes, so their CPU is not counted. Queues are paused: nothing is
dispatched, so the emulator only stores tasks.

Run: ``.venv/bin/python -m bench.fanout_cpu [--messages 2000] [--rounds 3]``. It prints the CPU
per message of each round and their median, and the wall time per message (p50). For a profile,
start it with ``--settle 3``, attach ``py-spy record -r 400 -f raw -o out.txt -d 20 --pid PID`` when
it prints "warmed up (pid PID)", and fold the stacks with ``python -m bench.fanout_cpu --fold
out.txt`` (``bench/profile_fanout.sh`` does all three).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import inprocess

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [
    {"id": "feed", "kind": "rss", "params": {}},
    {"id": "query", "kind": "news-api", "params": {"q": "acme"}},
]

# Stack frames → component, first match from the innermost frame outwards (``--fold``).
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("logging (JSON lines)", ("shared/logs.py", "logging/__init__.py")),
    ("garbage collector", ("<gc>",)),
    (
        "ledger (psycopg)",
        ("psycopg/", "psycopg_pool/", "shared/ledger/", "shared/dal/ledger_gateway.py"),
    ),
    (
        "Cloud Tasks create (proto-plus, api-core, gRPC)",
        (
            "google/cloud/tasks_v2",
            "proto/",
            "google/api_core",
            "grpc/",
            "shared/dal/cloud_tasks.py",
            "google/protobuf",
        ),
    ),
    ("thread-pool hand-off", ("concurrent/futures", "threading.py", "contextvars")),
    ("schema validation", ("shared/contracts.py", "shared/schema_compiler.py", "jsonschema")),
    (
        "framework (werkzeug, Flask, functions-framework)",
        ("werkzeug/", "flask/", "functions_framework/", "test_client", "click/"),
    ),
    (
        "handler (envelope, JSON, routing)",
        ("shared/handler.py", "shared/envelope.py", "json/", "shared/errors.py"),
    ),
    (
        "fanout use case (snapshot, keys, bodies)",
        (
            "shared/usecases/fanout.py",
            "shared/subscription.py",
            "shared/dispatch_key.py",
            "shared/scheduling",
            "shared/config.py",
            "shared/instants.py",
        ),
    ),
    ("bench driver", ("bench/fanout_cpu.py", "werkzeug/test.py")),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def push_body(index: int, slot: datetime, read_at: datetime, prefix: str) -> dict[str, Any]:
    """An emulator-shaped push of a scheduled due message with select's snapshot."""
    data = {
        "subscription_id": f"{prefix}{index:06d}",
        "slot": rfc3339(slot),
        "reason": "schedule",
        "tick_id": "bench",
        "subscription": {
            "read_at": rfc3339(read_at),
            "name": f"bench {index}",
            "status": "active",
            "paused": False,
            "schedule": {"cron": "0 * * * *", "timezone": "Europe/London"},
            "sources": SOURCES,
            "updated_at": rfc3339(read_at),
        },
    }
    published = rfc3339(read_at)
    return {
        "message": {
            "attributes": {"subscription_id": data["subscription_id"], "slot": data["slot"]},
            "data": base64.b64encode(json.dumps(data, separators=(",", ":")).encode()).decode(),
            "messageId": f"{prefix}{index}",
            "message_id": f"{prefix}{index}",
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": "projects/dispatcher-local/subscriptions/dispatcher-due-fanout",
    }


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def run(messages: int, rounds: int, warmup: int, settle: float = 0.0) -> dict[str, Any]:
    """Start PostgreSQL and the Cloud Tasks emulator, drive fanout, return the figures."""
    from emulators.postgres import PostgresServer
    from shared.ledger.migrate import migrate

    state = Path(tempfile.mkdtemp(prefix="bench-fanout-cpu-"))
    pg = PostgresServer(state / "pg")
    pg.start()
    tasks_port = free_port()
    emulator = subprocess.Popen(
        [sys.executable, "-m", "emulators.cloudtasks", "--port", str(tasks_port), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port(tasks_port)
        migrate(pg.database_url)
        os.environ.update(
            {
                "DATABASE_URL": pg.database_url,
                "CLOUD_TASKS_EMULATOR_HOST": f"127.0.0.1:{tasks_port}",
                "COLLECTOR_URL": "http://127.0.0.1:9/collect",
                "DISPATCHER_PUSH_AUTH_VERIFY": "false",
            }
        )
        from functions_framework import create_app

        from shared.clients import build_tasks_client
        from shared.config import get_settings
        from shared.tasks_admin import apply_queues

        settings = get_settings()
        admin = build_tasks_client(settings.cloud_tasks_emulator_host)
        apply_queues(settings, admin)
        for queue in settings.queues.values():
            for shard in range(queue.shards):
                admin.pause_queue(name=settings.queue_path(queue.kind, shard))

        app = create_app(target="handle", source=str(ROOT / "functions/fanout/main.py"))  # type: ignore[no-untyped-call]
        client = app.test_client()
        now = datetime.now(UTC).replace(second=0, microsecond=0)

        def drive(count: int, prefix: str) -> tuple[float, list[float]]:
            # Encoded before the clock starts: what is timed is the request, not its making. The
            # snapshot is read "now" for every round: fanout trusts it only for a few minutes
            # (snapshot_max_age_seconds) and would otherwise fall back to Firestore in a long run.
            read_at = datetime.now(UTC)
            bodies = [json.dumps(push_body(i, now, read_at, prefix)).encode() for i in range(count)]
            walls: list[float] = []
            cpu0 = time.process_time()
            for body in bodies:
                began = time.perf_counter()
                response = client.post("/", data=body, content_type="application/json")
                walls.append((time.perf_counter() - began) * 1000)
                if response.status_code != 200 or response.text != "acked":
                    raise RuntimeError(f"fanout answered {response.status_code} {response.text}")
            return (time.process_time() - cpu0) * 1000 / count, walls

        drive(warmup, "warm-")
        print(f"warmed up (pid {os.getpid()})", file=sys.stderr, flush=True)
        time.sleep(settle)
        per_round: list[float] = []
        walls: list[float] = []
        for r in range(rounds):
            cpu_ms, wall = drive(messages, f"r{r}-")
            per_round.append(round(cpu_ms, 3))
            walls.extend(wall)
            print(f"round {r + 1}: {cpu_ms:.3f} ms CPU per due message", file=sys.stderr)
        return {
            "messages_per_round": messages,
            "sources": len(SOURCES),
            "cpu_ms_per_due_rounds": per_round,
            "cpu_ms_per_due": round(statistics.median(per_round), 3),
            "wall_ms_p50": round(statistics.median(walls), 2),
            "measured_at": rfc3339(datetime.now(UTC)),
        }
    finally:
        emulator.terminate()
        try:
            emulator.wait(10)
        except subprocess.TimeoutExpired:
            emulator.kill()
        pg.stop()


def fold(path: Path) -> dict[str, float]:
    """Shares of py-spy's raw (collapsed) samples by component (:data:`CATEGORIES`)."""
    counts: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        if "push_body" in stack:
            continue  # the driver making its requests, outside the timed loop
        frames = stack.split(";")
        total += int(n)
        category = "other"
        for frame in reversed(frames):
            hit = next((name for name, keys in CATEGORIES if any(k in frame for k in keys)), None)
            if hit is not None:
                category = hit
                break
        counts[category] += int(n)
    return {k: round(100 * v / total, 1) for k, v in counts.most_common()} if total else {}


def main(argv: list[str] | None = None) -> int:
    """Run the rounds (or fold a profile); print the figures and write them with --output."""
    return inprocess.main(
        argv,
        description=(__doc__ or "").split("\n\n")[0],
        count_flag="--messages",
        count_help="due messages per round",
        default_count=2000,
        default_warmup=200,
        run=run,
        fold=fold,
    )


if __name__ == "__main__":
    raise SystemExit(main())
