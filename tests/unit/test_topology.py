"""topics.yaml: the typed loader, and one clear error naming the key for every mistake."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.paths import project_root
from shared.topology import TopologyError, load_topology, parse_topology

RAW: dict[str, Any] = yaml.safe_load((project_root() / "topics.yaml").read_text())


def test_the_shipped_topology_declares_the_five_topics_with_their_dead_letters() -> None:
    topology = load_topology()
    assert [t.name for t in topology.topics] == [
        "dispatcher-ticks",
        "dispatcher-due",
        "dispatcher-maintenance",
        "dispatcher-sync",
        "dispatcher-results",
        "dispatcher-run-completed",
    ]
    # run-completed has its consumer (plan-deliveries), so it is a topic, not a tapped event.
    assert topology.events == ()
    example = parse_topology({**RAW, "events": {"dispatcher-example": EXAMPLE_EVENT}})
    assert [(e.name, e.publisher) for e in example.events] == [("dispatcher-example", "results")]
    assert topology.for_function("plan-deliveries").name == "dispatcher-run-completed"
    for spec in topology.topics:
        assert spec.dead_letter.topic == f"{spec.name}-dlq"
        assert spec.dead_letter.subscription == f"{spec.name}-dlq-sub"
        assert (project_root() / "schemas" / spec.schema).is_file()
    assert topology.for_function("fanout").name == "dispatcher-due"
    assert topology.for_dead_letter_topic("dispatcher-due-dlq").push.function == "fanout"
    assert {job.topic for job in topology.scheduler} <= {t.name for t in topology.topics}
    assert any(
        job.cron == "* * * * *" and job.topic == "dispatcher-ticks" for job in topology.scheduler
    )


# The loader's rules for events, checked on one declared here: the shipped file has none now
# (run-completed became a topic when plan-deliveries started consuming it).
EXAMPLE_EVENT = {
    "description": "an event with no consumer of ours",
    "schema": "run-completed.v1.json",
    "publisher": "results",
    "subscription": "dispatcher-example-tap",
    "retention_days": 7,
}


def _broken(path: list[str], value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    raw["events"] = {"dispatcher-example": copy.deepcopy(EXAMPLE_EVENT)}
    node = raw
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    ("path", "value", "key", "problem"),
    [
        (["version"], 2, "version", "expected 1"),
        (
            ["topics", "dispatcher-due", "schema"],
            "due.v9.json",
            "topics.dispatcher-due.schema",
            "does not exist",
        ),
        (
            ["topics", "dispatcher-due", "push", "function"],
            "fanin",
            "topics.dispatcher-due.push.function",
            "is not one of",
        ),
        (
            ["topics", "dispatcher-due", "push", "ack_deadline_seconds"],
            5,
            "topics.dispatcher-due.push.ack_deadline_seconds",
            "outside the allowed range 10..600",
        ),
        (
            ["topics", "dispatcher-due", "push", "max_delivery_attempts"],
            "ten",
            "topics.dispatcher-due.push.max_delivery_attempts",
            "expected an integer",
        ),
        (
            ["topics", "dispatcher-due", "push", "retry", "min_backoff_seconds"],
            700,
            "topics.dispatcher-due.push.retry.min_backoff_seconds",
            "outside the allowed range",
        ),
        (
            ["topics", "dispatcher-due", "dead_letter", "topic"],
            "due-dead",
            "topics.dispatcher-due.dead_letter.topic",
            "must be dispatcher-due-dlq",
        ),
        (
            ["topics", "dispatcher-due", "push"],
            KeyError,
            "topics.dispatcher-due.push",
            "expected a mapping",
        ),
        (
            ["scheduler", "tick", "topic"],
            "dispatcher-tocks",
            "scheduler.tick.topic",
            "is not declared under topics",
        ),
        (
            ["scheduler", "tick", "cron"],
            "every minute",
            "scheduler.tick.cron",
            "not a 5-field cron",
        ),
        (
            ["events", "dispatcher-example", "publisher"],
            "resultz",
            "events.dispatcher-example.publisher",
            "is not one of",
        ),
        (
            ["events", "dispatcher-example", "schema"],
            "run-completed.v9.json",
            "events.dispatcher-example.schema",
            "does not exist",
        ),
        (
            ["events", "dispatcher-example", "retention_days"],
            8,
            "events.dispatcher-example.retention_days",
            "outside the allowed range",
        ),
    ],
)
def test_each_mistake_names_its_key(path: list[str], value: Any, key: str, problem: str) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(_broken(path, value))
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_two_topics_pushing_to_one_function_are_refused() -> None:
    raw = _broken(["topics", "dispatcher-sync", "push", "function"], "fanout")
    with pytest.raises(TopologyError, match="function 'fanout' is the push target of two topics"):
        parse_topology(raw)


def test_the_cli_reports_a_broken_file_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "schemas").symlink_to(project_root() / "schemas")
    broken = _broken(["topics", "dispatcher-due", "push", "ack_deadline_seconds"], 9000)
    (tmp_path / "topics.yaml").write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "topics", "apply", "--dry-run"],
        env={
            **os.environ,
            "DISPATCHER_HOME": str(tmp_path),
            "DISPATCHER_CONFIG_DIR": str(project_root()),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "topics.dispatcher-due.push.ack_deadline_seconds" in lines[0]
    assert "9000 is outside the allowed range 10..600" in lines[0]
