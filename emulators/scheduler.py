"""Local stand-in for Cloud Scheduler: publishes the jobs topics.yaml declares, on their crons.

Production's Cloud Scheduler jobs are declared by Terraform from the same `scheduler` section,
so the local stack behaves like production without anyone publishing by hand. Each publish
carries the attribute ``scheduler_job`` and is logged as one JSON line.

Run inside the stack (``PUBSUB_EMULATOR_HOST`` and ``GOOGLE_CLOUD_PROJECT`` set):
``python -m emulators.scheduler [--only tick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import google.cloud.pubsub_v1 as pubsub_v1
from cronsim import CronSim

from shared.topology import SchedulerJob, load_topology


def next_fire(job: SchedulerJob, after: datetime) -> datetime:
    """The first time strictly after ``after`` at which ``job`` fires, in UTC."""
    local = after.astimezone(ZoneInfo(job.timezone)).replace(microsecond=0)
    return next(iter(CronSim(job.cron, local))).astimezone(UTC)


def run(jobs: list[SchedulerJob], project: str, stop: threading.Event) -> None:
    publisher = pubsub_v1.PublisherClient()
    upcoming = {job.name: next_fire(job, datetime.now(UTC)) for job in jobs}
    by_name = {job.name: job for job in jobs}
    while not stop.is_set():
        name, due = min(upcoming.items(), key=lambda item: item[1])
        wait = (due - datetime.now(UTC)).total_seconds()
        if wait > 0 and stop.wait(wait):
            break
        job = by_name[name]
        data = json.dumps(dict(job.message)).encode()
        topic = f"projects/{project}/topics/{job.topic}"
        try:
            message_id = publisher.publish(topic, data, scheduler_job=job.name).result(timeout=30)
            print(
                json.dumps(
                    {
                        "severity": "INFO",
                        "message": "scheduler job published",
                        "job": job.name,
                        "topic": job.topic,
                        "message_id": message_id,
                        "scheduled_for": due.isoformat(),
                    }
                ),
                flush=True,
            )
        except Exception as exc:  # Cloud Scheduler logs a failed attempt and keeps the schedule.
            print(
                json.dumps(
                    {
                        "severity": "ERROR",
                        "message": "scheduler job failed",
                        "job": job.name,
                        "error": repr(exc),
                    }
                ),
                flush=True,
            )
        upcoming[name] = next_fire(job, due)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="run only these jobs (repeatable)")
    args = parser.parse_args(argv)
    jobs = [j for j in load_topology().scheduler if not args.only or j.name in args.only]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(
        json.dumps(
            {"severity": "INFO", "message": "scheduler started", "jobs": [j.name for j in jobs]}
        ),
        flush=True,
    )
    run(jobs, os.environ["GOOGLE_CLOUD_PROJECT"], stop)


if __name__ == "__main__":
    main()
