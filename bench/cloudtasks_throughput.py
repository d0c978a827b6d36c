"""Throughput ceiling of the Cloud Tasks emulator, as the local stack runs it.

Starts ``python -m emulators.cloudtasks`` as a child process (JSON log to a file, like the
stack), a fast keep-alive HTTP target in another process, and measures with the official
``CloudTasksClient``:

- CreateTask throughput with 1 client, with 16 clients as threads of one process, and with
  16 clients spread over 4 processes (a client process is GIL-bound too);
- dispatch throughput: tasks created in paused queues, then all queues resumed, until the
  target has answered every request (one queue is capped at 500/s by production's limit,
  so the aggregate uses several queues);
- creates into running queues while they dispatch (the fan-out shape): create rate and the
  rate at which everything has been delivered.

Prints a table and writes JSON (default ``bench/results/cloudtasks.json``).

Run: ``.venv/bin/python -m bench.cloudtasks_throughput [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import requests
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from bench.cpu import process_cpu_seconds
from emulators.process import ManagedProcess, free_port, http_ready

PARENT = "projects/bench/locations/us-central1"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "cloudtasks.json"


# --------------------------------------------------------------------------- target server


def _serve_target(port: int, ready: Any) -> None:
    """A minimal keep-alive HTTP/1.1 server answering 200; GET /count returns the POST count."""
    count = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:].strip())
                if length:
                    await reader.readexactly(length)
                if head.startswith(b"GET /count"):
                    body = str(count).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                    )
                else:
                    count += 1
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------- clients


def _client(target: str) -> tasks_v2.CloudTasksClient:
    channel = grpc.insecure_channel(target)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel))


def _create_many(
    target: str | tasks_v2.CloudTasksClient, queue: str, prefix: str, count: int, url: str
) -> None:
    client = _client(target) if isinstance(target, str) else target
    for i in range(count):
        client.create_task(
            parent=queue,
            task=tasks_v2.Task(
                name=f"{queue}/tasks/{prefix}-{i}",
                http_request=tasks_v2.HttpRequest(url=url, body=b'{"source": "bench"}'),
            ),
        )


def _process_worker(
    *, target: str, queue: str, prefix: str, threads: int, per_thread: int, url: str, start: Any
) -> None:
    clients = [_client(target) for _ in range(threads)]
    for client in clients:
        client.get_queue(name=queue)  # connect before the clock starts
    start.wait()
    workers = [
        threading.Thread(
            target=_create_many, args=(clients[t], queue, f"{prefix}-{t}", per_thread, url)
        )
        for t in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def _new_queue(client: tasks_v2.CloudTasksClient, paused: bool = True) -> str:
    name = f"{PARENT}/queues/bench-{uuid.uuid4().hex[:12]}"
    client.create_queue(parent=PARENT, queue=tasks_v2.Queue(name=name))
    if paused:
        client.pause_queue(name=name)
    return name


def measure_creates_threads(target: str, clients: int, total: int, url: str) -> dict[str, Any]:
    """``clients`` threads in this process, each with its own channel."""
    queue = _new_queue(_client(target))
    per_client = total // clients
    prefix = uuid.uuid4().hex[:6]
    channels = [_client(target) for _ in range(clients)]
    for client in channels:
        client.get_queue(name=queue)  # connect before the clock starts
    threads = [
        threading.Thread(
            target=_create_many, args=(channels[c], queue, f"{prefix}-{c}", per_client, url)
        )
        for c in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = per_client * clients
    return {
        "clients": clients,
        "layout": f"1 process x {clients} threads",
        "creates": done,
        "seconds": round(elapsed, 3),
        "per_second": round(done / elapsed, 1),
    }


def measure_creates_processes(
    target: str, processes: int, threads: int, total: int, url: str
) -> dict[str, Any]:
    """``processes`` x ``threads`` clients; processes are started before the clock starts."""
    queue = _new_queue(_client(target))
    per_thread = total // (processes * threads)
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes + 1)
    prefix = uuid.uuid4().hex[:6]
    procs = [
        context.Process(
            target=_process_worker,
            kwargs={
                "target": target,
                "queue": queue,
                "prefix": f"{prefix}-p{p}",
                "threads": threads,
                "per_thread": per_thread,
                "url": url,
                "start": start,
            },
        )
        for p in range(processes)
    ]
    for proc in procs:
        proc.start()
    start.wait(timeout=60)  # every process has imported, connected and is waiting
    started = time.perf_counter()
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    done = per_thread * processes * threads
    return {
        "clients": processes * threads,
        "layout": f"{processes} processes x {threads} threads",
        "creates": done,
        "seconds": round(elapsed, 3),
        "per_second": round(done / elapsed, 1),
    }


def measure_dispatch(
    target: str, queues: int, total: int, url: str, count_url: str
) -> dict[str, Any]:
    """Create ``total`` tasks over ``queues`` paused queues, resume all, time until all answered."""
    client = _client(target)
    names = [_new_queue(client) for _ in range(queues)]
    per_queue = total // queues
    prefix = uuid.uuid4().hex[:6]
    creators = [
        threading.Thread(target=_create_many, args=(target, q, prefix, per_queue, url))
        for q in names
    ]
    for creator in creators:
        creator.start()
    for creator in creators:
        creator.join()
    before = int(requests.get(count_url, timeout=5).text)
    started = time.perf_counter()
    for name in names:
        client.resume_queue(name=name)
    expected = before + per_queue * queues
    deadline = started + 120
    while int(requests.get(count_url, timeout=5).text) < expected:
        if time.perf_counter() > deadline:
            raise RuntimeError("dispatch did not finish within 120 s")
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    done = per_queue * queues
    return {
        "queues": queues,
        "tasks": done,
        "seconds": round(elapsed, 3),
        "per_second": round(done / elapsed, 1),
        "limit_per_second": 500 * queues,
    }


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine so far (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _with_cpu(pid: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Add the cores the emulator and the whole machine kept busy during ``measure``."""

    def emulator_cpu() -> float:
        seconds = process_cpu_seconds(pid)
        if seconds is None:
            raise RuntimeError(f"the Cloud Tasks emulator (pid {pid}) exited mid-measurement")
        return seconds

    emulator_before, machine_before = emulator_cpu(), _machine_busy()
    started = time.perf_counter()
    result = measure()
    elapsed = time.perf_counter() - started
    result["emulator_cores_busy"] = round((emulator_cpu() - emulator_before) / elapsed, 2)
    result["machine_cores_busy"] = round((_machine_busy() - machine_before) / elapsed, 2)
    return result


def measure_pipeline(
    target: str, clients: int, queues: int, total: int, url: str, count_url: str
) -> dict[str, Any]:
    """Create into running queues while they dispatch, like fan-out feeding collectors."""
    admin = _client(target)
    names = [_new_queue(admin, paused=False) for _ in range(queues)]
    per_client = total // clients
    prefix = uuid.uuid4().hex[:6]
    channels = [_client(target) for _ in range(clients)]
    for client in channels:
        client.get_queue(name=names[0])
    before = int(requests.get(count_url, timeout=5).text)
    threads = [
        threading.Thread(
            target=_create_many,
            args=(channels[c], names[c % queues], f"{prefix}-{c}", per_client, url),
        )
        for c in range(clients)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    created = time.perf_counter() - started
    done = per_client * clients
    deadline = started + 120
    while int(requests.get(count_url, timeout=5).text) < before + done:
        if time.perf_counter() > deadline:
            raise RuntimeError("pipeline dispatch did not finish within 120 s")
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "queues": queues,
        "tasks": done,
        "create_seconds": round(created, 3),
        "create_per_second": round(done / created, 1),
        "seconds": round(elapsed, 3),
        "per_second": round(done / elapsed, 1),
    }


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by throughput (runs on a shared 2-core machine are noisy)."""
    ordered = sorted(runs, key=lambda r: r["per_second"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["runs_per_second"] = [r["per_second"] for r in runs]
    return chosen


def _repeat(times: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return _best([measure() for _ in range(times)])


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=4000, help="tasks per create run")
    parser.add_argument("--dispatch-tasks", type=int, default=6000)
    parser.add_argument("--dispatch-queues", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median kept)")
    parser.add_argument("--quick", action="store_true", help="small runs, one repeat (CI smoke)")
    parser.add_argument(
        "--emulator-arg",
        action="append",
        default=[],
        help="extra argument for the emulator, e.g. --emulator-arg=--quiet",
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.creates, args.dispatch_tasks, args.repeat = 800, 1600, 1
    return args


@dataclass(frozen=True)
class EmulatorRig:
    """A running Cloud Tasks emulator and a target that counts what it receives."""

    target: str  # the emulator's gRPC address
    url: str  # where tasks are sent
    count_url: str  # GET: how many tasks arrived
    pid: int  # the emulator's process (its CPU is measured)


@contextmanager
def emulator_and_target(prefix: str, emulator_args: Sequence[str] = ()) -> Iterator[EmulatorRig]:
    """Start our Cloud Tasks emulator and a counting HTTP target on free ports, wait until both
    are ready, and stop both afterwards (the benchmarks in bench/ that drive the emulator)."""
    grpc_port, http_port, target_port = free_port(), free_port(), free_port()
    context = multiprocessing.get_context("spawn")
    target_ready = context.Event()
    target_proc = context.Process(
        target=_serve_target, args=(target_port, target_ready), daemon=True
    )
    target_proc.start()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    emulator = ManagedProcess(
        name="cloudtasks",
        argv=[
            sys.executable,
            "-m",
            "emulators.cloudtasks",
            "--host",
            "127.0.0.1",
            "--port",
            str(grpc_port),
            "--http-port",
            str(http_port),
            *emulator_args,
        ],
        log_path=workdir / "emulator.log",
        ready=http_ready(f"http://127.0.0.1:{http_port}/healthz"),
        cwd=Path(__file__).resolve().parents[1],
        startup_timeout=30.0,
    )
    emulator.start()
    try:
        emulator.wait_ready()
        if not target_ready.wait(10):
            raise RuntimeError("target server did not start")
        yield EmulatorRig(
            target=f"127.0.0.1:{grpc_port}",
            url=f"http://127.0.0.1:{target_port}/collect",
            count_url=f"http://127.0.0.1:{target_port}/count",
            pid=emulator.pid,
        )
    finally:
        emulator.stop()
        target_proc.terminate()
        target_proc.join(5)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement, print a summary, write the JSON file."""
    args = parse_args(argv)
    with emulator_and_target("cloudtasks-bench-", args.emulator_arg) as rig:
        target, url, count_url, pid = rig.target, rig.url, rig.count_url, rig.pid
        _create_many(target, _new_queue(_client(target)), "warmup", 200, url)

        one = _repeat(
            args.repeat,
            lambda: _with_cpu(pid, lambda: measure_creates_threads(target, 1, args.creates, url)),
        )
        sixteen_threads = _repeat(
            args.repeat,
            lambda: _with_cpu(pid, lambda: measure_creates_threads(target, 16, args.creates, url)),
        )
        sixteen_procs = _repeat(
            args.repeat,
            lambda: _with_cpu(
                pid, lambda: measure_creates_processes(target, 4, 4, args.creates, url)
            ),
        )
        single_queue = _repeat(
            args.repeat,
            lambda: _with_cpu(
                pid,
                lambda: measure_dispatch(target, 1, min(args.dispatch_tasks, 1500), url, count_url),
            ),
        )
        many_queues = _repeat(
            args.repeat,
            lambda: _with_cpu(
                pid,
                lambda: measure_dispatch(
                    target, args.dispatch_queues, args.dispatch_tasks, url, count_url
                ),
            ),
        )
        pipeline = _repeat(
            args.repeat,
            lambda: _with_cpu(
                pid,
                lambda: measure_pipeline(
                    target, 16, args.dispatch_queues, args.creates, url, count_url
                ),
            ),
        )

    best_16 = max(sixteen_threads["per_second"], sixteen_procs["per_second"])
    result = {
        "benchmark": "cloudtasks_throughput",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "emulator_args": args.emulator_arg,
        "create": {
            "1_client": one,
            "16_clients_threads": sixteen_threads,
            "16_clients_processes": sixteen_procs,
        },
        "dispatch": {"1_queue": single_queue, f"{args.dispatch_queues}_queues": many_queues},
        "create_while_dispatching": pipeline,
        "ratios": {
            "create_16_threads_vs_1": round(sixteen_threads["per_second"] / one["per_second"], 2),
            "create_16_processes_vs_1": round(sixteen_procs["per_second"] / one["per_second"], 2),
            "dispatch_vs_best_16_client_create": round(many_queues["per_second"] / best_16, 2),
            "dispatch_1_queue_vs_limit": round(single_queue["per_second"] / 500, 2),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"create, 1 client:                {one['per_second']:8.1f} /s")
    print(
        f"create, 16 clients (threads):    {sixteen_threads['per_second']:8.1f} /s  "
        f"x{result['ratios']['create_16_threads_vs_1']}"
    )
    print(
        f"create, 16 clients (4x4 procs):  {sixteen_procs['per_second']:8.1f} /s  "
        f"x{result['ratios']['create_16_processes_vs_1']}"
    )
    print(f"dispatch, 1 queue (limit 500/s): {single_queue['per_second']:8.1f} /s")
    print(
        f"dispatch, {args.dispatch_queues} queues:              {many_queues['per_second']:8.1f} /s"
    )
    print(
        f"16 clients creating into {args.dispatch_queues} running queues: "
        f"{pipeline['create_per_second']:8.1f} creates/s, "
        f"all dispatched at {pipeline['per_second']:8.1f} /s"
    )
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
