"""The demo: the whole pipeline on the local stack, printed as it happens.

``./dev demo`` runs this. It starts the local stack (with the Cloud Scheduler stand-in, so a
tick arrives every minute as in production), imports the sample subscriptions of
``examples/subscriptions.yaml`` with the operator's CLI, publishes one tick at once so the first
dispatch shows within seconds, then follows the functions' logs and the collector: ticks
reaching ``select``, due messages reaching ``fanout``, tasks arriving at the collector with a
verified OIDC token, their outcomes reaching ``results`` and each run completing. After
``--minutes`` (default 3) it prints a summary and the ledger (runs, dispatches with outcomes,
outcomes per source kind), and ends with the scheduled digest of ``acme-news`` (every two
minutes), received by the SMTP sink: planned by ``select`` on the tick, sent by ``deliver``
(waiting for it if the first slot has not come yet). Then it stops the stack (``--keep``
leaves it running for ``dispatcher`` and ``gcloud`` commands).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from emulators.process import StackError
from emulators.stack import LocalStack, StackOptions, default_state_dir, stack_status
from shared.paths import project_root

FOLLOWED_LOGS = (
    "fn-select",
    "fn-fanout",
    "fn-results",
    "fn-maintenance",
    "fn-sync",
    "fn-deliver",
    "scheduler",
)
COLOURS = {
    "scheduler": "35",
    "fn-select": "36",
    "fn-fanout": "33",
    "collector": "32",
    "fn-results": "34",
    "fn-deliver": "31",
}
#: The demo's digest (examples/subscriptions.yaml): every 2 minutes, so one comes within 2.
DIGEST_SUBSCRIPTION = "acme-news"
DIGEST_WAIT_SECONDS = 180.0


class LogFollower:
    """Yields new JSON lines of a file, remembering how far it has read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new_lines(self) -> Iterator[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return
        complete, _, _ = chunk.rpartition(b"\n")
        if not complete:
            return
        self.offset += len(complete) + 1
        for line in complete.decode(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def describe(component: str, entry: Mapping[str, Any]) -> str | None:
    """One human line for a structured log entry, or None for noise."""
    message = str(entry.get("message", ""))
    if component == "collector":
        return None
    if component == "scheduler":
        if "job" not in entry:
            return None
        return f"Cloud Scheduler stand-in published job {entry['job']} to {entry.get('topic')}"
    if component == "fn-deliver" and entry.get("delivery_key") is None:
        # The stack's readiness probe (a GET without a token, answered 401), not an email task.
        return None
    severity = str(entry.get("severity", "INFO"))
    if severity == "DEBUG":
        return None
    details = [
        f"{key}={entry[key]}"
        for key in (
            "subscription_id",
            "slot",
            "reason",
            "outcome",
            "execution_state",
            "due",
            "published",
            "tasks",
            "delivery_id",
            "digests_planned",
        )
        if key in entry
    ]
    return f"{severity:<7} {message}" + (f"  ({', '.join(details)})" if details else "")


def describe_task(record: Mapping[str, Any]) -> str:
    body = record.get("body") if isinstance(record.get("body"), dict) else {}
    key = body.get("dispatch_key", {}) if isinstance(body, dict) else {}
    auth = record.get("auth", {})
    token = "OIDC verified" if auth.get("verified") else f"OIDC refused: {auth.get('reason')}"
    outcome = record.get("outcome")
    return (
        f"task {record['headers'].get('x-cloudtasks-taskname', '?')[:40]}… "
        f"for {key.get('subscription_id')}/{key.get('source_id')} slot {key.get('slot')} "
        f"via queue {record['headers'].get('x-cloudtasks-queuename')} ({token})"
        + (f" -> outcome {outcome} reported" if outcome else "")
    )


def paint(component: str, text: str) -> str:
    if not sys.stdout.isatty():
        return f"[{component}] {text}"
    return f"\033[{COLOURS.get(component, '0')}m[{component}]\033[0m {text}"


def cli(env: Mapping[str, str], *args: str) -> None:
    """Run the operator's CLI against the stack, as a newcomer would type it."""
    print(f"$ dispatcher {' '.join(args)}", flush=True)
    subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        env={**os.environ, **env},
        check=True,
        cwd=project_root(),
    )


def follow(stack_dir: Path, minutes: float) -> Counter[str]:
    followers = {name: LogFollower(stack_dir / "logs" / f"{name}.log") for name in FOLLOWED_LOGS}
    tasks = LogFollower(stack_dir / "collector.jsonl")
    received: Counter[str] = Counter()
    deadline = time.monotonic() + minutes * 60
    while time.monotonic() < deadline:
        for name, follower in followers.items():
            for entry in follower.new_lines():
                line = describe(name, entry)
                if line:
                    print(paint(name, line), flush=True)
        for record in tasks.new_lines():
            body = record.get("body")
            if isinstance(body, dict):
                received[str(body.get("dispatch_key", {}).get("subscription_id"))] += 1
            print(paint("collector", describe_task(record)), flush=True)
        time.sleep(0.25)
    return received


def wait_for_digest(env: Mapping[str, str], timeout: float) -> dict[str, Any] | None:
    """The first digest email the SMTP sink received for the demo's subscription, or None."""
    import requests

    deadline = time.monotonic() + timeout
    while True:
        try:
            messages = requests.get(f"{env['SMTP_SINK_URL']}/messages", timeout=5).json()
        except (requests.RequestException, ValueError):
            messages = []
        for message in messages:
            if " digest " in str(message.get("subject")) and DIGEST_SUBSCRIPTION in str(
                message.get("raw")
            ):
                found: dict[str, Any] = message
                return found
        if time.monotonic() > deadline:
            return None
        time.sleep(1.0)


def print_digest(message: Mapping[str, Any]) -> None:
    """The digest as a person would read it: envelope, headers, the plain-text part."""
    import email
    import email.policy

    parsed = email.message_from_string(str(message.get("raw", "")), policy=email.policy.default)
    body = parsed.get_body(preferencelist=("plain",))
    print(f"  To:         {', '.join(message.get('rcpt_tos', []))}")
    print(f"  Subject:    {message.get('subject')}")
    print(f"  Message-ID: {message.get('message_id')}")
    print(f"  Received:   {message.get('received_at')}")
    if body is not None:
        print("  " + "\n  ".join(str(body.get_content()).rstrip().splitlines()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to follow")
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    parser.add_argument(
        "--subscriptions",
        type=Path,
        default=project_root() / "examples" / "subscriptions.yaml",
        help="subscriptions to import",
    )
    args = parser.parse_args(argv)
    state_dir = default_state_dir()
    if any(c.alive for c in stack_status(state_dir)):
        raise SystemExit(
            f"a stack is already running from {state_dir}: run `dispatcher stack down` first"
        )
    stack = LocalStack(StackOptions(state_dir=state_dir, scheduler=True))
    print("Starting the local stack (Pub/Sub, Firestore, Cloud Tasks, PostgreSQL, functions)…")
    try:
        env = stack.up()
    except StackError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"Stack ready in {stack.timings['up']:.1f}s; environment in {stack.env_path}\n")
    try:
        cli(env, "subscriptions", "import", str(args.subscriptions), "--replace")
        cli(env, "subscriptions", "list")
        # New subscriptions are first due at the next minute; a manual run shows fan-out now.
        cli(env, "run", "acme-news")
        cli(env, "tick")
        print(f"\nFollowing the pipeline for {args.minutes:g} minute(s); Ctrl-C stops.\n")
        try:
            received = follow(stack.state_dir, args.minutes)
        except KeyboardInterrupt:
            received = Counter()
        print("\nTasks received by the collector, per subscription:")
        for subscription_id, count in sorted(received.items()):
            print(f"  {subscription_id:<20} {count}")
        cli(env, "ledger", "runs", "acme-news")
        cli(env, "ledger", "dispatches", "acme-news", "--limit", "6")
        cli(env, "ledger", "outcomes", "--since", "1h")
        print(f"\nWaiting for the scheduled digest of {DIGEST_SUBSCRIPTION} at the SMTP sink…")
        digest = wait_for_digest(env, DIGEST_WAIT_SECONDS)
        if digest is None:
            print(f"no digest arrived within {DIGEST_WAIT_SECONDS:g}s: see `dispatcher stack logs`")
            return 1
        cli(env, "deliveries", "list", DIGEST_SUBSCRIPTION)
        print("\nThe digest email the SMTP sink received (one per recipient, this is the first):")
        print_digest(digest)
    finally:
        if args.keep:
            print(f"\nStack left running: `source {stack.env_path}`; stop: dispatcher stack down")
        else:
            stack.stop_started()
            print("\nStack stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
