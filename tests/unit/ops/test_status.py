"""``dispatcher status`` checks against fakes: each names what needs a person, or says ok."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from shared.cli.app import app
from shared.cli.common import CliError
from shared.config import Settings, load_settings
from shared.ledger.repository import OutcomeSummary
from shared.ops.deadletters import DeadLetterMessage
from shared.ops.status import (
    DEFAULT_CHECKS,
    Backlog,
    CheckResult,
    DispatchHealth,
    StatusContext,
    check_backlog,
    check_dead_letters,
    check_dispatches,
    check_outcomes,
    check_queues,
    check_select,
    run_status,
)
from shared.ops.status_sources import emulator_backlog, latest_point
from shared.topology import TopicSpec, load_topology
from tests.support.core import subscription_doc, utc
from tests.unit.core.fakes import FakeSubscriptionStore

NOW = utc("2026-01-05T09:30")


class _Letters:
    def __init__(self, by_topic: Mapping[str, list[str]]) -> None:
        self.by_topic = by_topic

    def peek(
        self, topics: Sequence[TopicSpec], *, limit: int | None = None
    ) -> list[DeadLetterMessage]:
        return [
            DeadLetterMessage(
                source=spec,
                message_id=f"{spec.name}-{n}",
                ack_id="a",
                data=b"{}",
                attributes={"dlq_reason_class": reason},
            )
            for spec in topics
            for n, reason in enumerate(self.by_topic.get(spec.name, []))
        ]


@pytest.fixture
def settings() -> Settings:
    return load_settings(environ={}, shard_count=4)


@pytest.fixture
def store() -> FakeSubscriptionStore:
    return FakeSubscriptionStore()


def context(
    settings: Settings,
    store: FakeSubscriptionStore,
    *,
    letters: Mapping[str, list[str]] | None = None,
    health: DispatchHealth | None = None,
    states: Mapping[str, str | None] | None = None,
    backlog: Any = emulator_backlog,
    outcomes: list[OutcomeSummary] | None = None,
) -> StatusContext:
    all_running = {settings.queue_path(k): "RUNNING" for k in settings.queues}
    return StatusContext(
        settings=settings,
        topology=load_topology(),
        now=NOW,
        store=lambda: store,
        dead_letters=lambda: _Letters(letters or {}),
        dispatch_health=lambda _after: health or DispatchHealth(0, 0, [], NOW),
        queue_states=lambda: dict(all_running if states is None else states),
        backlog=backlog,
        outcomes=lambda _window: outcomes or [],
    )


def add(store: FakeSubscriptionStore, sid: str, next_run: str) -> None:
    doc = subscription_doc(sid, schedule={"every": 300}, start=utc(next_run), shard_count=4)
    store.put(sid, doc)


def test_a_healthy_system_needs_no_attention(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    add(store, "future", "2026-01-05T09:35")
    report = run_status(context(settings, store))
    assert not report.needs_attention and report.problems == []
    states = {c.name: c.state for c in report.checks}
    # The emulator's backlog cannot be counted without disturbing it: unknown, not a problem.
    assert states == {
        "select": "ok",
        "due-backlog": "unknown",
        "dead-letters": "ok",
        "dispatches": "ok",
        "queues": "ok",
        "outcomes": "ok",
    }


def test_select_lag_is_the_oldest_overdue_next_run(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    add(store, "recent", "2026-01-05T09:28")
    assert check_select(context(settings, store)).state == "ok"
    add(store, "stale", "2026-01-05T09:10")
    result = check_select(context(settings, store))
    assert result.state == "attention"
    assert result.details["oldest_due_subscription"] == "stale"
    assert result.details["lag_seconds"] == 20 * 60
    assert "stale" in result.problems[0]


def test_dead_letters_are_counted_per_subscription_with_their_classes(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    letters = {"dispatcher-due": ["TasksRejectedError", "TasksRejectedError", "X"]}
    result = check_dead_letters(context(settings, store, letters=letters))
    assert result.state == "attention"
    assert result.details["counts"]["dispatcher-due-dlq-sub"] == 3
    assert result.details["counts"]["dispatcher-ticks-dlq-sub"] == 0
    [problem] = result.problems
    assert "dispatcher-due-dlq-sub: 3" in problem and "TasksRejectedError x2" in problem


def test_failed_and_stuck_dispatches_are_named(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    example = {
        "subscription_id": "acme",
        "slot": "2026-01-05T09:00:00Z",
        "source_id": "digest",
        "state": "failed",
        "last_error": "Cloud Tasks refused … with NOT_FOUND",
    }
    result = check_dispatches(
        context(settings, store, health=DispatchHealth(1, 2, [example], None))
    )
    assert result.state == "attention"
    assert any("1 dispatch(es) failed" in p for p in result.problems)
    assert any("2 dispatch(es) claimed" in p for p in result.problems)
    assert any("acme @ 2026-01-05T09:00:00Z source digest" in p for p in result.problems)


def test_a_missing_or_paused_queue_needs_attention(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    states: dict[str, str | None] = {settings.queue_path(k): "RUNNING" for k in settings.queues}
    del states[settings.queue_path("email-digest")]
    states[settings.queue_path("social")] = "PAUSED"
    result = check_queues(context(settings, store, states=states))
    assert result.state == "attention"
    assert len(result.problems) == 2
    assert "collect-email-digest (email-digest) does not exist" in result.problems[0]
    assert "collect-social (social) is PAUSED" in result.problems[1]


def test_a_measured_backlog_older_than_the_lag_needs_attention(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    def backlog(subscription: str) -> Backlog:
        old = subscription == "dispatcher-due-fanout"
        return Backlog(subscription, 40 if old else 0, 900.0 if old else 0.0)

    result = check_backlog(context(settings, store, backlog=backlog))
    assert result.state == "attention"
    assert result.problems == [
        "dispatcher-due-fanout: 40 message(s) waiting, the oldest for 15m 0s"
    ]


def test_a_check_that_cannot_read_its_dependency_needs_attention_and_the_rest_still_run(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    def broken(_after: timedelta) -> DispatchHealth:
        raise ConnectionError("ledger unreachable")

    ctx = replace(context(settings, store), dispatch_health=broken)
    report = run_status(ctx)
    assert report.needs_attention
    assert report.problems == ["dispatches: could not check: ConnectionError: ledger unreachable"]
    assert len(report.checks) == len(DEFAULT_CHECKS)
    extra = run_status(ctx, [lambda _ctx: CheckResult("results", "ok", "later")])
    assert [c.name for c in extra.checks] == ["results"]


def test_the_newest_monitoring_point_is_read() -> None:
    body = {
        "timeSeries": [
            {
                "points": [
                    {"interval": {"endTime": "2026-01-05T09:29:00Z"}, "value": {"int64Value": "7"}},
                    {"interval": {"endTime": "2026-01-05T09:28:00Z"}, "value": {"int64Value": "3"}},
                ]
            }
        ]
    }
    assert latest_point(body) == 7.0
    assert latest_point({}) is None


def test_tick_refuses_a_time_beyond_the_skew_unless_asked() -> None:
    result = CliRunner().invoke(app, ["tick", "--time", "2099-01-01T00:00:00Z"])
    assert isinstance(result.exception, CliError), result.output
    assert "max_tick_skew_seconds=300" in str(result.exception)
    assert "--allow-future" in str(result.exception)


def test_final_failures_and_lost_dispatches_need_attention_per_kind(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    healthy = OutcomeSummary("rss", 10, 9, 0, 1, 0, 0, 0)
    result = check_outcomes(context(settings, store, outcomes=[healthy]))
    assert (result.state, result.summary) == (
        "ok",
        "9 of 10 succeeded, 0 pending in the last 60 min",
    )
    broken = OutcomeSummary("news-api", 5, 2, 1, 0, 2, 0, 0)
    result = check_outcomes(context(settings, store, outcomes=[healthy, broken]))
    assert result.state == "attention"
    assert result.problems == [
        "news-api: 1 failed, 2 lost of 5 in the last 60 min "
        "(dispatcher ledger outcomes --since 60m)"
    ]
    unread = StatusContext(**{**vars(context(settings, store)), "outcomes": None})
    assert check_outcomes(unread).state == "unknown"


def test_every_shard_of_a_kind_is_shown_and_a_missing_shard_needs_attention(
    settings: Settings, store: FakeSubscriptionStore
) -> None:
    rss = settings.queues["rss"]
    sharded = replace(settings, queues={**settings.queues, "rss": replace(rss, shards=3)})
    states: dict[str, str | None] = {
        p: "RUNNING" for k in sharded.queues for p in sharded.queue_paths(k)
    }
    result = check_queues(context(sharded, store, states=states))
    assert result.state == "ok"
    for name in ("collect-rss RUNNING", "collect-rss-1 RUNNING", "collect-rss-2 RUNNING"):
        assert name in result.summary
    assert result.details["shards"]["rss"] == {
        "collect-rss": "RUNNING",
        "collect-rss-1": "RUNNING",
        "collect-rss-2": "RUNNING",
    }
    del states[sharded.queue_path("rss", 2)]
    result = check_queues(context(sharded, store, states=states))
    assert result.state == "attention"
    assert result.problems == [
        "collect-rss-2 (rss) does not exist: fanout dead-letters about 1/3 of the rss tasks "
        "(create it, then dispatcher dlq replay --topic dispatcher-due)"
    ]
