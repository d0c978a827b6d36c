"""The CPU floor of select + fanout: what the required I/O alone costs in CPython, per due message.

A goal of "select + fanout ≤ N ms of CPU per due message" is only reachable if the work that no
code of ours can remove costs less than N. This measures that work, part by part, with the same
libraries and the same real stand-ins the project uses, and nothing of our own logic around it:

* **framework** (fanout: one push request per due message): a functions-framework app whose
  function only reads the body and answers 204, served as the local stack serves functions
  (``functions-framework`` CLI under gunicorn, ``THREADS=8``) and driven over HTTP (keep-alive)
  from another process with emulator-shaped Pub/Sub push bodies of a real due message's size;
  the server's CPU is read from ``/proc`` (the gunicorn master and its worker). The same app is
  also driven in-process through ``create_app(...).test_client()``, the way
  :mod:`bench.fanout_cpu` measures the real function.
* **decode + validate**: ``json`` of the push body, base64 + ``json`` of its data, one
  validation of the due message (``shared.contracts``).
* **log line**: one JSON line through the project's formatter (``shared.logs``).
* **creates**: two Cloud Tasks ``CreateTask`` calls with real-shaped HTTP task bodies through
  :class:`shared.dal.cloud_tasks.CloudTasksGateway` (the plain protobuf stub), the first on the
  calling thread and the second on a thread pool, as fanout does, on the Cloud Tasks emulator
  (queues paused).
* **ledger**: two statements (``INSERT ... ON CONFLICT DO NOTHING RETURNING`` and an
  ``UPDATE``) on one pooled psycopg connection already in autocommit, on a real PostgreSQL.
* **select read**: one document of a due-query page (the project's query, ``shared.dal.due_query``)
  streamed from the Firestore emulator, amortised over a page.
* **select publish**: one due message through the batching publisher (the project's batch
  settings), every future waited on, amortised over a page.
* **select advance**: one conditional ``next_run_at`` update in a ``BulkWriteBatch`` (as
  ``FirestoreStore.advance_many`` writes it), amortised over a page. Not in the issue's list;
  select cannot skip it (the contract keeps ``next_run_at`` current), so it is in the floor
  and reported separately too.

select's own push (one tick) is shared by every due message of the tick: its framework cost per
due message is ~0 and is left out. The CPU is this process's (``time.process_time``: every
thread, gRPC's and the publisher's included) except the HTTP framework part (the server's).
Every part is measured once per round, interleaved, so a burst of other load on this shared
machine falls on all of them; the figures are the medians over the rounds. The real figures
beside them come from :mod:`bench.fanout_cpu` run in the same invocation (a subprocess, after
each round of the parts, so every round has its own real / floor ratio) and from
``bench/results/burst.json`` (an earlier run, marked as such).

Run: ``.venv/bin/python -m bench.floor [--rounds 5] [--messages 400] [--page 100]``; it writes
``bench/results/floor.json``.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PROJECT = "dispatcher-local"
LOCATION = "europe-west1"
TOPIC = "floor-due"


@dataclass(frozen=True)
class Part:
    """One piece of irreducible work: which function pays it, and whether the floor counts it."""

    key: str
    function: str  # "fanout" or "select"
    label: str
    in_floor: bool = True


PARTS: tuple[Part, ...] = (
    Part("framework_http", "fanout", "functions-framework under gunicorn, one push over HTTP"),
    Part(
        "framework_test_client",
        "fanout",
        "functions-framework through test_client (in-process; compare with bench.fanout_cpu)",
        in_floor=False,
    ),
    Part("decode_validate", "fanout", "push JSON + base64 + JSON decode, one due validation"),
    Part("log_line", "fanout", "one JSON log line (shared.logs)"),
    Part("creates", "fanout", "two CreateTask (plain stub, one inline + one on a pool)"),
    Part("ledger", "fanout", "two psycopg statements on one pooled autocommit connection"),
    Part("select_read", "select", "one document of a streamed due-query page (Firestore)"),
    Part("select_publish", "select", "one publish, batched, future waited on (Pub/Sub)"),
    Part("select_advance", "select", "one conditional next_run_at update, BulkWriteBatch"),
)
PART_KEYS = tuple(p.key for p in PARTS)


# -- pure arithmetic (unit-tested) --------------------------------------------------------------


def medians(rounds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The median of each part over the rounds that measured it."""
    keys = [k for k in PART_KEYS if any(k in r for r in rounds)]
    keys += sorted({k for r in rounds for k in r} - set(keys))
    return {k: round(statistics.median([r[k] for r in rounds if k in r]), 3) for k in keys}


def floor_of(parts_ms: Mapping[str, float], parts: Sequence[Part] = PARTS) -> dict[str, float]:
    """Per-function and total floor (ms per due message) from the parts the floor counts.

    ``in_process`` is fanout's floor with the test-client framework figure instead of the HTTP
    one: the figure to hold against :mod:`bench.fanout_cpu`, which measures that way.
    """
    fanout = sum(parts_ms[p.key] for p in parts if p.in_floor and p.function == "fanout")
    select = sum(parts_ms[p.key] for p in parts if p.in_floor and p.function == "select")
    fanout_in_process = (
        fanout - parts_ms["framework_http"] + parts_ms["framework_test_client"]
        if "framework_http" in parts_ms and "framework_test_client" in parts_ms
        else None
    )
    out = {
        "fanout": round(fanout, 3),
        "select": round(select, 3),
        "select_without_advance": round(select - parts_ms.get("select_advance", 0.0), 3),
        "total": round(fanout + select, 3),
    }
    if fanout_in_process is not None:
        out["fanout_in_process"] = round(fanout_in_process, 3)
    return out


def ratios(real: Mapping[str, Any], floor: Mapping[str, float]) -> dict[str, float]:
    """real / floor for every number both sides have (a zero or missing floor is skipped)."""
    return {
        k: round(v / floor[k], 2)
        for k, v in real.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and floor.get(k)
    }


def report(
    rounds: Sequence[Mapping[str, float]],
    real: Mapping[str, Any],
    machine: Mapping[str, Any],
    settings: Mapping[str, Any],
    goal_ms: float = 4.0,
) -> dict[str, Any]:
    """The JSON written to ``bench/results/floor.json``."""
    parts_ms = medians(rounds)
    floor = floor_of(parts_ms)
    rounds_floor = per_round(rounds)
    return {
        "benchmark": "floor",
        "when": datetime.now(UTC).isoformat(),
        "machine": dict(machine),
        "settings": dict(settings),
        "unit": "cpu_ms_per_due_message",
        "parts": {
            p.key: {"function": p.function, "what": p.label, "in_floor": p.in_floor} for p in PARTS
        },
        "rounds": [dict(r) for r in rounds],
        "median": parts_ms,
        "floor": floor,
        "goal_ms": goal_ms,
        "floor_over_goal": round(floor["total"] / goal_ms, 2),
        "real": dict(real),
        "real_over_floor": ratios(real, floor),
        "per_round": rounds_floor,
        "floor_total_range": [
            min(e["floor"]["total"] for e in rounds_floor),
            max(e["floor"]["total"] for e in rounds_floor),
        ]
        if rounds_floor
        else None,
    }


# -- workloads ----------------------------------------------------------------------------------


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def push_body(index: int, now: datetime, prefix: str) -> bytes:
    """The push :mod:`bench.fanout_cpu` sends: a scheduled due message with select's snapshot."""
    from bench.fanout_cpu import push_body as fanout_push_body

    return json.dumps(fanout_push_body(index, now, now, prefix)).encode()


def task_body(sub: str, slot: str, source: Mapping[str, Any], run_id: int) -> bytes:
    """A collector task body of the real shape (``schemas/collector-task.v1.json``)."""
    body = {
        "dispatch_key": {"subscription_id": sub, "slot": slot, "source_id": source["id"]},
        "source": dict(source),
        "subscription": {"id": sub, "name": f"bench {sub}"},
        "slot": slot,
        "reason": "schedule",
        "task_name": f"t-{sub}-{source['id']}",
        "run_id": run_id,
        "dispatched_at": slot,
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


NOOP_SOURCE = '''"""A function that does nothing: the framework's own cost per request."""


def handle(request):
    request.get_data()
    return ("", 204)
'''


def drive_http(url: str, body_file: Path, count: int) -> None:
    """Post ``count`` copies of the bodies in ``body_file`` (one per line) over one connection."""
    parts = urllib.parse.urlsplit(url)
    bodies = body_file.read_bytes().splitlines()
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"Content-Type": "application/json", "User-Agent": "APIs-Google"}
    for i in range(count):
        conn.request("POST", "/", body=bodies[i % len(bodies)], headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 204:
            raise RuntimeError(f"noop function answered {response.status}")
    conn.close()


def tree_cpu_seconds(pid: int) -> float:
    from bench.cpu import process_cpu_seconds
    from emulators.process import descendants

    return sum(s for p in [pid, *descendants(pid)] if (s := process_cpu_seconds(p)) is not None)


class Floor:
    """The stand-ins, the clients and one measurement per part."""

    def __init__(self, state: Path, messages: int, page: int) -> None:
        self.state = state
        self.messages = messages
        self.page = page
        self.now = datetime.now(UTC).replace(second=0, microsecond=0)
        self.bodies = [push_body(i, self.now, "floor-") for i in range(messages)]
        self.stops: list[Callable[[], None]] = []
        self.serial = 0

    # -- start-up --------------------------------------------------------------------------------

    def start(self) -> None:
        import shutil

        from emulators.postgres import PostgresServer
        from emulators.process import ManagedProcess, free_port, http_ready, tcp_ready

        def managed(name: str, argv: list[str], ready: Callable[[], bool], **env: str) -> int:
            proc = ManagedProcess(
                name=name,
                argv=argv,
                log_path=self.state / f"{name}.log",
                ready=ready,
                env={**env, "PYTHONUNBUFFERED": "1"},
                cwd=ROOT,
            )
            proc.start()
            self.stops.append(proc.stop)
            proc.wait_ready()
            return proc.pid

        pg = PostgresServer(self.state / "pg")
        pg.start()
        self.stops.append(pg.stop)
        self.database_url = pg.database_url
        gcloud = shutil.which("gcloud")
        if gcloud is None:
            raise RuntimeError("gcloud is not on PATH (Pub/Sub and Firestore emulators)")
        (self.state / "pubsub").mkdir()
        ports = {n: free_port() for n in ("pubsub", "firestore", "tasks", "fn")}
        managed(
            "pubsub",
            [gcloud, "beta", "emulators", "pubsub", "start",
             f"--host-port=127.0.0.1:{ports['pubsub']}", f"--project={PROJECT}",
             f"--data-dir={self.state / 'pubsub'}"],
            http_ready(f"http://127.0.0.1:{ports['pubsub']}/"),
        )  # fmt: skip
        managed(
            "firestore",
            [gcloud, "emulators", "firestore", "start",
             f"--host-port=127.0.0.1:{ports['firestore']}"],
            http_ready(f"http://127.0.0.1:{ports['firestore']}/"),
        )  # fmt: skip
        managed(
            "cloudtasks",
            [sys.executable, "-m", "emulators.cloudtasks", "--port", str(ports["tasks"]),
             "--quiet"],
            tcp_ready("127.0.0.1", ports["tasks"]),
        )  # fmt: skip
        framework = shutil.which("functions-framework", path=str(Path(sys.executable).parent))
        if framework is None:
            raise RuntimeError("functions-framework is not installed in this environment")
        noop = self.state / "noop" / "main.py"
        noop.parent.mkdir(parents=True)
        noop.write_text(NOOP_SOURCE)
        runtime = self.state / "run"
        runtime.mkdir()
        self.fn_pid = managed(
            "fn-noop",
            [framework, "--source", str(noop), "--target", "handle", "--signature-type", "http",
             "--host", "127.0.0.1", "--port", str(ports["fn"])],
            http_ready(f"http://127.0.0.1:{ports['fn']}/", expect_status=None),
            THREADS="8",
            XDG_RUNTIME_DIR=str(runtime),
        )  # fmt: skip
        self.fn_url = f"http://127.0.0.1:{ports['fn']}/"
        self.body_file = self.state / "bodies.jsonl"
        self.body_file.write_bytes(b"\n".join(self.bodies))
        os.environ.update(
            {
                "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{ports['pubsub']}",
                "FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{ports['firestore']}",
                "GOOGLE_CLOUD_PROJECT": PROJECT,
            }
        )
        self._clients(f"127.0.0.1:{ports['tasks']}", noop)

    def _clients(self, tasks_host: str, noop: Path) -> None:
        import google.cloud.pubsub_v1 as pubsub_v1
        from functions_framework import create_app
        from google.cloud import firestore
        from psycopg_pool import ConnectionPool

        from shared.clients import build_tasks_client
        from shared.contracts import get_contract
        from shared.dal.cloud_tasks import CloudTasksGateway
        from shared.logs import setup_logging

        # Tasks: one paused queue per source kind, the gateway fanout uses.
        client = build_tasks_client(tasks_host)
        parent = f"projects/{PROJECT}/locations/{LOCATION}"
        self.queues = {}
        for kind in ("rss", "news-api"):
            name = f"{parent}/queues/floor-{kind}"
            client.create_queue(request={"parent": parent, "queue": {"name": name}})
            client.pause_queue(name=name)
            self.queues[kind] = name
        self.gateway = CloudTasksGateway(lambda: client)
        self.create_pool = ThreadPoolExecutor(4, "floor-create")
        # Ledger: a pool whose connections stay in autocommit (no BEGIN / COMMIT round trips).
        self.pool: Any = ConnectionPool(
            self.database_url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True
        )
        with self.pool.connection() as conn:
            conn.execute(
                "CREATE TABLE floor_runs (id bigserial PRIMARY KEY, subscription_id text NOT NULL,"
                " slot timestamptz NOT NULL, reason text NOT NULL, state text,"
                " created_at timestamptz NOT NULL DEFAULT now(), UNIQUE (subscription_id, slot))"
            )
        # Logging: the project's formatter, to /dev/null (stdout is this report).
        self.devnull = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        setup_logging("INFO", project=PROJECT, stream=self.devnull)
        self.logger = logging.getLogger("shared.usecases.fanout")
        self.due_contract = get_contract("due.v1.json")
        # Framework, in-process.
        app = create_app(target="handle", source=str(noop))  # type: ignore[no-untyped-call]
        self.test_client = app.test_client()
        # Pub/Sub: the project's batch settings.
        batch = pubsub_v1.types.BatchSettings(
            max_messages=500, max_bytes=1_000_000, max_latency=0.01
        )
        self.publisher = pubsub_v1.PublisherClient(batch_settings=batch)
        self.topic = self.publisher.topic_path(PROJECT, TOPIC)
        self.publisher.create_topic(name=self.topic)
        # Firestore: one page of due documents, alone in the collection (the emulator walks it).
        self.firestore = firestore.Client(project=PROJECT)
        self.collection = self.firestore.collection("subscriptions")
        writer = self.firestore.batch()
        for i in range(self.page):
            data = json.loads(base64.b64decode(json.loads(self.bodies[i])["message"]["data"]))
            doc = {k: v for k, v in data["subscription"].items() if k != "read_at"}
            doc.update(
                shard=0,
                next_run_at=self.now - timedelta(hours=1),
                created_at=self.now,
                updated_at=self.now,
            )
            writer.set(self.collection.document(data["subscription_id"]), doc)
        writer.commit()

    def stop(self) -> None:
        for attribute, method in (
            ("create_pool", "shutdown"),
            ("pool", "close"),
            ("publisher", "stop"),
            ("devnull", "close"),
        ):
            if not hasattr(self, attribute):
                continue
            try:
                getattr(getattr(self, attribute), method)()
            except Exception as exc:
                print(f"closing: {exc!r}", file=sys.stderr)
        for stop in reversed(self.stops):
            try:
                stop()
            except Exception as exc:
                print(f"stopping: {exc!r}", file=sys.stderr)

    # -- the parts: each returns CPU ms per due message ------------------------------------------

    def framework_http(self) -> float:
        before = tree_cpu_seconds(self.fn_pid)
        subprocess.run(
            [sys.executable, "-m", "bench.floor", "--drive", self.fn_url,
             "--body-file", str(self.body_file), "--count", str(self.messages)],
            cwd=ROOT, check=True,
        )  # fmt: skip
        return (tree_cpu_seconds(self.fn_pid) - before) * 1000 / self.messages

    def framework_test_client(self) -> float:
        client = self.test_client
        cpu0 = time.process_time()
        for body in self.bodies:
            response = client.post("/", data=body, content_type="application/json")
            if response.status_code != 204:
                raise RuntimeError(f"noop answered {response.status_code}")
        return (time.process_time() - cpu0) * 1000 / self.messages

    def decode_validate(self) -> float:
        validate = self.due_contract.validate
        cpu0 = time.process_time()
        for body in self.bodies:
            push = json.loads(body)
            validate(json.loads(base64.b64decode(push["message"]["data"])))
        return (time.process_time() - cpu0) * 1000 / self.messages

    def log_line(self) -> float:
        info = self.logger.info
        cpu0 = time.process_time()
        for i in range(self.messages):
            info(
                "due message fanned out",
                extra={
                    "subscription_id": f"floor-{i:06d}",
                    "slot": "2026-12-01T04:00:00Z",
                    "decision": "dispatched",
                    "tasks": 2,
                    "tasks_created": 2,
                    "duration_ms": 12.5,
                },
            )
        return (time.process_time() - cpu0) * 1000 / self.messages

    def _task_requests(self, i: int) -> list[Any]:
        from bench.fanout_cpu import SOURCES
        from shared.dal.records import TaskRequest

        self.serial += 1
        sub, slot = f"floor-{self.serial:07d}", rfc3339(self.now)
        requests = []
        for source in SOURCES:
            kind = str(source["kind"])
            url = f"https://collector.example.com/{kind}"
            requests.append(
                TaskRequest(
                    name=f"{self.queues[kind]}/tasks/f{self.serial:07d}-{source['id']}",
                    queue=self.queues[kind],
                    url=url,
                    body=task_body(sub, slot, source, self.serial),
                    schedule_time=self.now + timedelta(seconds=i % 30),
                    service_account="collector-invoker@dispatcher-local.iam.gserviceaccount.com",
                    audience=url,
                )
            )
        return requests

    def creates(self) -> float:
        requests = [self._task_requests(i) for i in range(self.messages)]
        create, submit = self.gateway.create, self.create_pool.submit
        cpu0 = time.process_time()
        for first, second in requests:
            future = submit(create, second)
            create(first)
            future.result()
        return (time.process_time() - cpu0) * 1000 / self.messages

    def ledger(self) -> float:
        self.serial += 1
        keys = [(f"floor-{self.serial:07d}-{i:05d}", self.now) for i in range(self.messages)]
        connection = self.pool.connection
        cpu0 = time.process_time()
        for sub, slot in keys:
            with connection() as conn:
                row = conn.execute(
                    "INSERT INTO floor_runs (subscription_id, slot, reason) VALUES (%s, %s, %s) "
                    "ON CONFLICT (subscription_id, slot) DO NOTHING RETURNING id",
                    (sub, slot, "schedule"),
                ).fetchone()
                conn.execute("UPDATE floor_runs SET state = %s WHERE id = %s", ("created", row[0]))
        return (time.process_time() - cpu0) * 1000 / self.messages

    def _pages(self) -> int:
        return max(1, self.messages // self.page)

    def select_read(self) -> float:
        from shared.dal.due_query import due_query

        tick = self.now
        pages = self._pages()
        read = 0
        cpu0 = time.process_time()
        for _ in range(pages):
            for snapshot in due_query(self.collection, 0, tick, self.page).stream():
                read += 1
                snapshot.to_dict()
        cpu = time.process_time() - cpu0
        if read != pages * self.page:
            raise RuntimeError(f"read {read} documents, expected {pages * self.page}")
        return cpu * 1000 / read

    def select_publish(self) -> float:
        from concurrent import futures

        datas = [
            base64.b64decode(json.loads(b)["message"]["data"]) for b in self.bodies[: self.page]
        ]
        pages = self._pages()
        publish, topic = self.publisher.publish, self.topic
        cpu0 = time.process_time()
        for _ in range(pages):
            pending = [
                publish(topic, d, subscription_id=f"floor-{i:06d}", slot="2026-12-01T04:00:00Z")
                for i, d in enumerate(datas)
            ]
            futures.wait(pending, timeout=60)
            for f in pending:
                f.result()
        return (time.process_time() - cpu0) * 1000 / (pages * self.page)

    def select_advance(self) -> float:
        from google.cloud.firestore_v1.bulk_batch import BulkWriteBatch

        pages = self._pages()
        written = 0
        cpu = 0.0
        for _ in range(pages):
            # Untimed: the preconditions need the current update times (select read them).
            snapshots = list(self.collection.limit(self.page).stream())
            self.serial += 1
            cpu0 = time.process_time()
            batch = BulkWriteBatch(self.firestore)
            for snap in snapshots:
                batch.update(
                    snap.reference,
                    {
                        "next_run_at": self.now - timedelta(hours=1, seconds=self.serial),
                        "updated_at": self.now,
                    },
                    option=self.firestore.write_option(last_update_time=snap.update_time),
                )
            response = batch.commit()
            cpu += time.process_time() - cpu0
            written += sum(1 for s in response.status if s.code == 0)
        if written != pages * self.page:
            raise RuntimeError(f"advanced {written} documents, expected {pages * self.page}")
        return cpu * 1000 / written

    def idle(self, seconds: float = 1.0) -> float:
        """This process's CPU ms per second while nothing is asked of it (clients' threads)."""
        cpu0 = time.process_time()
        time.sleep(seconds)
        return (time.process_time() - cpu0) * 1000 / seconds

    def round(self) -> dict[str, float]:
        figures = {key: round(getattr(self, key)(), 3) for key in PART_KEYS}
        figures["idle_ms_per_second"] = round(self.idle(), 3)
        return figures


REAL_KEY = "real_fanout_in_process"


def fanout_cpu_once(messages: int) -> float:
    """One round of :mod:`bench.fanout_cpu` (the real fanout, in-process): CPU ms per due."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [sys.executable, "-m", "bench.fanout_cpu", "--messages", str(messages),
             "--rounds", "1", "--warmup", "100", "--output", out.name],
            cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return float(json.loads(Path(out.name).read_text())["cpu_ms_per_due"])


def real_figures(
    rounds: Sequence[Mapping[str, float]], burst: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The real figures: fanout in-process (median of the rounds' own runs of
    :mod:`bench.fanout_cpu`) and, if given, the burst's per-function CPU (an earlier run)."""
    real: dict[str, Any] = {}
    measured = [r[REAL_KEY] for r in rounds if REAL_KEY in r]
    if measured:
        real["fanout_in_process"] = round(statistics.median(measured), 3)
    if burst is not None:
        cpu = burst["cpu"]["cpu_ms_per_due_message"]
        real["fanout"] = cpu.get("fn-fanout")
        real["select"] = cpu.get("fn-select")
        if real["fanout"] is not None and real["select"] is not None:
            real["total"] = round(real["fanout"] + real["select"], 3)
    return real


def per_round(rounds: Sequence[Mapping[str, float]]) -> list[dict[str, Any]]:
    """Each round's own floor, and real / floor where the round ran the real fanout too: on a
    shared machine the ratio within a round is steadier than either figure."""
    out = []
    for r in rounds:
        floor = floor_of(r)
        entry: dict[str, Any] = {"floor": floor}
        if REAL_KEY in r:
            entry["real_over_floor"] = ratios({"fanout_in_process": r[REAL_KEY]}, floor)
        out.append(entry)
    return out


def print_table(result: Mapping[str, Any]) -> None:
    rounds = result["rounds"]
    print(f"{'part':24} " + " ".join(f"r{i + 1:<6}" for i in range(len(rounds))) + " median")
    for key in [*PART_KEYS, "idle_ms_per_second", REAL_KEY]:
        if key not in result["median"]:
            continue
        cells = " ".join(f"{r.get(key, float('nan')):<7.3f}" for r in rounds)
        print(f"{key:24} {cells} {result['median'][key]:.3f}")
    nan = float("nan")
    rows: dict[str, list[float]] = {
        "floor total": [],
        "floor fanout in-process": [],
        "real/floor in-process": [],
    }
    for entry in result["per_round"]:
        rows["floor total"].append(entry["floor"]["total"])
        rows["floor fanout in-process"].append(entry["floor"].get("fanout_in_process", nan))
        rows["real/floor in-process"].append(
            entry.get("real_over_floor", {}).get("fanout_in_process", nan)
        )
    for label, values in rows.items():
        print(f"{label:24} " + " ".join(f"{v:<7.3f}" for v in values))
    print("floor:", json.dumps(result["floor"]))
    print("real: ", json.dumps(result["real"]))
    print("real / floor:", json.dumps(result["real_over_floor"]))
    print("load average:", result["machine"]["load_average"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=400, help="due messages per part, round")
    parser.add_argument("--page", type=int, default=100, help="select's page (docs, publishes)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument(
        "--real-messages",
        type=int,
        default=300,
        help="bench.fanout_cpu messages per round (0: skip)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "floor.json")
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    parser.add_argument("--body-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        drive_http(args.drive, args.body_file, args.count)
        return 0
    load_before = os.getloadavg()
    floor = Floor(Path(tempfile.mkdtemp(prefix="bench-floor-")), args.messages, args.page)
    rounds: list[dict[str, float]] = []
    loads: list[tuple[float, float, float]] = []
    try:
        floor.start()
        for _ in range(args.warmup):
            floor.round()
        for r in range(args.rounds):
            rounds.append(floor.round())
            if args.real_messages:
                rounds[-1][REAL_KEY] = round(fanout_cpu_once(args.real_messages), 3)
            loads.append(os.getloadavg())
            print(f"round {r + 1}: {json.dumps(rounds[-1])}", file=sys.stderr, flush=True)
    finally:
        floor.stop()
    burst = RESULTS / "burst.json"
    real = real_figures(rounds, json.loads(burst.read_text()) if burst.exists() else None)
    machine = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": load_before,
        "load_average_after_each_round": loads,
        "load_average": os.getloadavg(),
    }
    settings = {
        "rounds": args.rounds,
        "warmup_rounds": args.warmup,
        "messages_per_part_per_round": args.messages,
        "select_page": args.page,
        "sources": 2,
        "real_fanout_cpu_messages": args.real_messages,
        "real_from_burst_json": "bench/results/burst.json (an earlier run, not this one)",
    }
    result = report(rounds, real, machine, settings)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
