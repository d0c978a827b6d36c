"""Where the machine's CPU goes during a benchmark, and how fast the Pub/Sub emulator can push.

Every part of the local stack (the emulators, PostgreSQL, the collector stub, our functions and
the benchmark driver) shares the same few cores. A pipeline that is CPU-bound therefore cannot
deliver more than ``cores / CPU-seconds per due message`` messages a second, however its own code
is written. :class:`StackCpu` measures that bound in the same run as the figure it explains: CPU
seconds per component (``/proc/<pid>/stat``), per due message, split into our functions and the
local stand-ins for managed services (which cost nothing on our cores in production).

:func:`emulator_push_rate` measures the other local bound: the gcloud Pub/Sub emulator pushes
each subscription's messages from exactly two synchronous loops (``startPushLoops`` in its jar
starts 2 ``PushLoop`` threads, each pushing one message and waiting for the answer), so a push
subscription never has more than 2 requests in flight and delivers at most ``2 / latency``
messages a second. Production Pub/Sub grows push concurrency with the endpoint's success rate.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emulators.process import stat_fields

if TYPE_CHECKING:
    from emulators.stack import LocalStack

__all__ = [
    "StackCpu",
    "cpu_report",
    "emulator_push_rate",
    "host_busy_seconds",
    "process_cpu_seconds",
]

# The functions we deploy; every other component stands in for a managed service or a worker.
OURS_PREFIX = "fn-"
DRIVER = "bench-driver"


def host_busy_seconds(proc: Path = Path("/proc")) -> float:
    """CPU seconds every core of the machine has been busy since boot (``/proc/stat``): ours,
    the stand-ins' and everybody else's."""
    fields = (proc / "stat").read_text().split("\n", 1)[0].split()
    # cpu user nice system idle iowait irq softirq steal ...
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User + system CPU seconds of one live process, or ``None`` if it is gone."""
    fields = stat_fields(pid, proc)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class StackCpu:
    """CPU seconds per component of a running local stack, sampled before and after a run."""

    stack: LocalStack
    before: dict[str, float] = field(default_factory=dict)
    host_before: float = 0.0

    def sample(self) -> dict[str, float]:
        """CPU seconds so far of every component's live processes, and of this process."""
        seconds = {
            name: sum(
                s
                for s in (process_cpu_seconds(p) for p in self.stack.component_pids(name))
                if s is not None
            )
            for name in self.stack.processes
        }
        seconds[DRIVER] = time.process_time()
        return seconds

    def start(self) -> None:
        """Remember where every counter stands."""
        self.before = self.sample()
        self.host_before = host_busy_seconds()

    def report(self, units: int, unit: str, wall_seconds: float) -> dict[str, Any]:
        """What the run since :meth:`start` cost; see :func:`cpu_report`."""
        return cpu_report(
            self.before,
            self.sample(),
            units,
            unit,
            wall_seconds,
            os.cpu_count() or 1,
            host_busy=host_busy_seconds() - self.host_before,
        )


def cpu_report(
    before: Mapping[str, float],
    after: Mapping[str, float],
    units: int,
    unit: str,
    wall_seconds: float,
    cores: int,
    host_busy: float | None = None,
) -> dict[str, Any]:
    """CPU per component and per unit (a due message, say), and the throughput it allows.

    A component absent from ``after`` (stopped meanwhile) is left out: its CPU is unknown.
    ``cpu_bound_per_second`` is the most units a second these cores could process if the run's
    CPU cost per unit were all that mattered; ``stand_ins_only_per_second`` is the same bound
    counting only the emulators, PostgreSQL and the collector, i.e. with our code for free.

    ``host_busy`` (the whole machine's busy CPU seconds in the same window, if known) tells how
    much of the cores other work took meanwhile (``others_cpu_seconds``): on a shared machine
    ``cpu_bound_per_second_beside_others`` is the bound with only the cores that work left.
    """
    spent = {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
    total = sum(spent.values())
    ours = sum(s for name, s in spent.items() if name.startswith(OURS_PREFIX))
    stand_ins = total - ours - spent.get(DRIVER, 0.0)
    per_unit_ms = {name: round(1000 * s / units, 2) for name, s in spent.items()} if units else {}
    return {
        "unit": unit,
        "units": units,
        "cores": cores,
        "wall_seconds": round(wall_seconds, 3),
        "cpu_seconds": {name: round(s, 2) for name, s in spent.items()},
        f"cpu_ms_per_{unit}": per_unit_ms,
        f"cpu_ms_per_{unit}_total": round(1000 * total / units, 2) if units else None,
        f"cpu_ms_per_{unit}_ours": round(1000 * ours / units, 2) if units else None,
        f"cpu_ms_per_{unit}_stand_ins": round(1000 * stand_ins / units, 2) if units else None,
        "machine_utilisation": round(total / (wall_seconds * cores), 2) if wall_seconds else None,
        "cpu_bound_per_second": round(units * cores / total, 1) if total else None,
        "stand_ins_only_per_second": round(units * cores / stand_ins, 1) if stand_ins else None,
        **_beside_others(total, units, wall_seconds, cores, host_busy),
    }


def _beside_others(
    total: float, units: int, wall_seconds: float, cores: int, host_busy: float | None
) -> dict[str, Any]:
    if host_busy is None or not wall_seconds:
        return {}
    others = max(0.0, host_busy - total)
    left = cores - others / wall_seconds  # cores' worth other work left to this run
    return {
        "host_busy_cpu_seconds": round(host_busy, 2),
        "others_cpu_seconds": round(others, 2),
        "others_cores": round(others / wall_seconds, 2),
        "cpu_bound_per_second_beside_others": round(units * left / total, 1)
        if total and left > 0
        else None,
    }


class _CountingEndpoint(BaseHTTPRequestHandler):
    """Answers every push 204 after ``latency``, counting deliveries and requests in flight."""

    server: _PushSink

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        sink = self.server
        with sink.lock:
            sink.in_flight += 1
            sink.max_in_flight = max(sink.max_in_flight, sink.in_flight)
        if sink.latency:
            time.sleep(sink.latency)  # a function's work, so that concurrency would show
        with sink.lock:
            sink.in_flight -= 1
            sink.delivered += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


class _PushSink(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, latency: float) -> None:
        super().__init__(("127.0.0.1", 0), _CountingEndpoint)
        self.latency = latency
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.delivered = 0


@contextlib.contextmanager
def _serving(sink: _PushSink) -> Iterator[str]:
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sink.server_address[1]}/push"
    finally:
        sink.shutdown()
        sink.server_close()


def emulator_push_rate(
    env: Mapping[str, str], messages: int, latency: float = 0.0, timeout: float = 120.0
) -> dict[str, Any]:
    """Push ``messages`` through a fresh push subscription to an endpoint that answers 204
    after ``latency`` seconds and does nothing else.

    Returns the delivery rate and the most requests ever in flight: the emulator's own push
    ceiling on this machine, for an endpoint as fast as that.
    """
    from emulators.stack import environment

    project = env["GOOGLE_CLOUD_PROJECT"]
    suffix = f"{os.getpid()}-{time.monotonic_ns()}"
    with environment({k: env[k] for k in ("PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")}):
        from google.cloud import pubsub_v1

        batch = pubsub_v1.types.BatchSettings(max_messages=500, max_latency=0.01)
        publisher = pubsub_v1.PublisherClient(batch_settings=batch)
        subscriber = pubsub_v1.SubscriberClient()
    topic = publisher.topic_path(project, f"bench-push-ceiling-{suffix}")
    subscription = subscriber.subscription_path(project, f"bench-push-ceiling-{suffix}")
    sink = _PushSink(latency)
    try:
        with _serving(sink) as url:
            publisher.create_topic(name=topic)
            subscriber.create_subscription(
                request={
                    "name": subscription,
                    "topic": topic,
                    "push_config": {"push_endpoint": url},
                    "ack_deadline_seconds": 60,
                }
            )
            started = time.monotonic()
            futures = [publisher.publish(topic, b"{}") for _ in range(messages)]
            for future in futures:
                future.result(timeout=60)
            deadline = started + timeout
            while sink.delivered < messages and time.monotonic() < deadline:
                time.sleep(0.05)
            seconds = time.monotonic() - started
    finally:
        with contextlib.suppress(Exception):
            subscriber.delete_subscription(subscription=subscription)
        with contextlib.suppress(Exception):
            publisher.delete_topic(topic=topic)
        subscriber.close()
        publisher.transport.close()
    return {
        "messages": messages,
        "endpoint_latency_ms": round(1000 * latency, 1),
        "delivered": sink.delivered,
        "seconds": round(seconds, 3),
        "messages_per_second": round(sink.delivered / seconds, 1),
        "max_in_flight": sink.max_in_flight,
    }
