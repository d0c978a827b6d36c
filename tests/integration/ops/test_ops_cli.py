"""The ops CLI against the real stack: subscriptions, dead letters, ledger, maintenance, sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest

from shared.cli.common import CliError
from shared.config import get_settings
from shared.ops.context import OpsContext
from shared.ops.subscriptions import write_subscription
from shared.outcomes import Report
from shared.usecases.maintenance import JobContext, run_job
from shared.usecases.sync import run_sync
from tests.support.polling import wait_for
from tests.support.stack import StackHandle

pytestmark = pytest.mark.integration

SUBS_YAML = """
subscriptions:
  - id: acme-news
    name: Acme news
    schedule: {cron: "30 8 * * 1-5", timezone: Europe/Paris}
    sources:
      - {id: reuters, kind: rss, params: {url: "https://example.com/feed.xml"}}
      - {id: newsapi, kind: news-api}
    deliveries:
      - id: morning
        channel: email
        to: [pr@acme.example]
        schedule: {cron: "0 9 * * 1-5", timezone: Europe/Paris}
        format: digest
  - id: hourly
    name: Hourly
    schedule: {every: 3600}
    sources: [{id: digest, kind: rss}]
"""


@pytest.fixture
def ctx(ops_env: dict[str, str]) -> Iterator[OpsContext]:
    context = OpsContext()
    try:
        yield context
    finally:
        context.close()


def test_subscriptions_import_show_pause_resume_delete(
    invoke: Callable[..., Any], tmp_path: Path, ctx: OpsContext
) -> None:
    path = tmp_path / "subs.yaml"
    path.write_text(SUBS_YAML)
    assert invoke("subscriptions", "validate", str(path)).exit_code == 0
    result = invoke("subscriptions", "import", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["created"] == 2
    # Importing again leaves them alone; --replace with the same content changes nothing.
    again = json.loads(invoke("subscriptions", "import", str(path), "--json").stdout)
    assert again["counts"]["exists"] == 2
    same = json.loads(invoke("subscriptions", "import", str(path), "--replace", "--json").stdout)
    assert same["counts"]["unchanged"] == 2

    listed = json.loads(invoke("subscriptions", "list", "--json").stdout)
    assert [row["id"] for row in listed] == ["acme-news", "hourly"]

    shown = json.loads(invoke("subscriptions", "show", "acme-news", "--json").stdout)
    assert shown["time_zone"] == "Europe/Paris"
    runs = [datetime.fromisoformat(t) for t in shown["next_runs"]]
    assert len(runs) == 5
    paris = [t.astimezone(ZoneInfo("Europe/Paris")) for t in runs]
    assert all((t.hour, t.minute) == (8, 30) and t.weekday() < 5 for t in paris)
    stored = ctx.store().get("acme-news")
    assert stored is not None
    assert stored.data["next_run_at"] == runs[0].astimezone(UTC)
    (digest,) = shown["digest_schedules"]
    assert (digest["delivery"], digest["cron"], digest["timezone"]) == (
        "morning",
        "0 9 * * 1-5",
        "Europe/Paris",
    )
    digest_at = datetime.fromisoformat(digest["next_run_at"]).astimezone(ZoneInfo("Europe/Paris"))
    assert (digest_at.hour, digest_at.minute, digest_at.weekday() < 5) == (9, 0, True)
    text = invoke("subscriptions", "show", "acme-news").stdout
    assert "morning" in text and digest["next_run_at"] in text

    assert invoke("subscriptions", "pause", "acme-news").exit_code == 0
    paused = ctx.store().get("acme-news")
    assert paused is not None
    assert paused.data["paused"] is True and paused.data["next_run_at"] is None
    before = datetime.now(UTC)
    resumed = json.loads(invoke("subscriptions", "resume", "acme-news", "--json").stdout)
    assert resumed[0]["changed"] is True
    back = ctx.store().get("acme-news")
    assert back is not None and back.data["paused"] is False
    assert before <= back.data["next_run_at"] == runs[0].astimezone(UTC)

    assert invoke("subscriptions", "delete", "acme-news", "--yes").exit_code == 0
    # Deleting retires the digest rather than forgetting it: show would no longer find the
    # subscription, so read the schedule itself.
    (retired,) = ctx.digest_schedules().for_subscription("acme-news")
    assert retired.next_run_at is None
    assert invoke("subscriptions", "delete", "hourly", "--yes").exit_code == 0
    assert ctx.store().get("hourly") is None
    missing = invoke("subscriptions", "show", "hourly")
    assert missing.exit_code == 1 and isinstance(missing.exception, CliError)
    assert "does not exist" in str(missing.exception)


def test_invalid_input_writes_nothing_and_names_path(
    invoke: Callable[..., Any], tmp_path: Path, ctx: OpsContext
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "ok-one",
                    "name": "fine",
                    "schedule": {"every": 60},
                    "sources": [{"id": "s", "kind": "rss"}],
                },
                {
                    "id": "bad-one",
                    "name": "bad",
                    "schedule": {"cron": "61 * * * *"},
                    "sources": [{"id": "s", "kind": "rss"}],
                },
            ]
        )
    )
    result = invoke("subscriptions", "import", str(path))
    assert result.exit_code == 1 and isinstance(result.exception, CliError)
    assert "$.schedule.cron" in result.output
    assert ctx.store().get("ok-one") is None
    usage = invoke("subscriptions", "add", "x", "--name", "n")
    assert usage.exit_code == 2


def _seed(ctx: OpsContext, sub_id: str, **extra: Any) -> None:
    raw = {"name": sub_id, "schedule": {"every": 900}, "sources": [{"id": "s", "kind": "rss"}]}
    write_subscription(
        ctx.store(),
        sub_id,
        {**raw, **extra},
        now=lambda: datetime.now(UTC),
        shard_count=ctx.settings.shard_count,
        known_kinds=ctx.settings.queues.keys(),
    )


def _job(ctx: OpsContext, job: str, now: datetime, **args: Any) -> dict[str, int]:
    context = JobContext(ctx.settings, now, ctx.store, ctx.ledger)
    return run_job(job, {"job": job, **args}, context)


def test_expire_and_recompute_twice_on_firestore(ctx: OpsContext) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _seed(ctx, "ends-soon", ends_at=soon)
    _seed(ctx, "forever")
    later = datetime.now(UTC) + timedelta(hours=2)
    assert _job(ctx, "expire", later)["expired"] == 1
    doc = ctx.store().get("ends-soon")
    assert doc is not None and doc.data["status"] == "expired" and doc.data["next_run_at"] is None
    assert _job(ctx, "expire", later)["expired"] == 0

    ctx.store().update("forever", {"next_run_at": None, "shard": 1000}, if_updated_at=None)
    first = _job(ctx, "recompute-next-run", datetime.now(UTC))
    assert first["updated"] == 1
    fixed = ctx.store().get("forever")
    assert fixed is not None and fixed.data["next_run_at"] is not None
    assert fixed.data["shard"] < ctx.settings.shard_count
    second = _job(ctx, "recompute-next-run", datetime.now(UTC))
    assert second["updated"] == 0 and second["unchanged"] == 1


def test_prune_ledger_twice(ctx: OpsContext, stack: StackHandle) -> None:
    ledger = ctx.ledger()
    slot = datetime(2026, 1, 5, 9, tzinfo=UTC)
    run = ledger.record_run("acme", slot, "schedule")
    ledger.claim_dispatch(run, "s", "rss", "tasks/x", "collect-rss")
    ledger.record_run("acme", slot + timedelta(minutes=1), "schedule")
    with psycopg.connect(stack.env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "UPDATE runs SET created_at = now() - interval '40 days' WHERE id = %s", (run.id,)
        )
    now = datetime.now(UTC)
    dry = _job(ctx, "prune-ledger", now, dry_run=True)
    assert (dry["runs"], dry["dispatches"]) == (1, 1)
    first = _job(ctx, "prune-ledger", now)
    assert (first["runs"], first["dispatches"], first["older_than_days"]) == (1, 1, 30)
    assert _job(ctx, "prune-ledger", now)["runs"] == 0
    assert [r.slot for r in ledger.runs_for("acme")] == [slot + timedelta(minutes=1)]


def _mirror(stack: StackHandle) -> dict[str, tuple[str, bool]]:
    with psycopg.connect(stack.env["DATABASE_URL"]) as conn:
        return {
            str(r[0]): (str(r[1]), bool(r[2]))
            for r in conn.execute("SELECT subscription_id, name, paused FROM subscriptions_mirror")
        }


def test_sync_twice_inserts_updates_deletes(
    ctx: OpsContext, stack: StackHandle, invoke: Callable[..., Any]
) -> None:
    for i in range(7):
        _seed(ctx, f"sub-{i}")

    def sync() -> dict[str, int]:
        return run_sync(
            {"all": True}, store_factory=ctx.store, ledger_factory=ctx.ledger, page_size=3
        ).as_dict()

    first = sync()
    assert (first["inserted"], first["pages"]) == (7, 3)
    assert sync() == {
        "scanned": 7,
        "inserted": 0,
        "updated": 0,
        "unchanged": 7,
        "deleted": 0,
        "pages": 3,
    }
    ctx.store().delete("sub-0")
    ctx.store().update("sub-1", {"name": "renamed"}, if_updated_at=None)
    third = sync()
    assert (third["deleted"], third["updated"], third["unchanged"]) == (1, 1, 5)
    mirror = _mirror(stack)
    assert sorted(mirror) == [f"sub-{i}" for i in range(1, 7)]
    assert mirror["sub-1"] == ("renamed", False)
    # One subscription, through the CLI: a paused document reaches the mirror.
    assert invoke("subscriptions", "pause", "sub-2").exit_code == 0
    one = json.loads(invoke("sync", "sub-2", "--json").stdout)
    assert one["updated"] == 1
    assert _mirror(stack)["sub-2"] == ("sub-2", True)


def test_maintenance_and_sync_functions_through_pubsub(ctx: OpsContext, stack: StackHandle) -> None:
    _seed(ctx, "through-topic")
    stack.gcloud_publish("dispatcher-sync", '{"all": true}')
    wait_for(
        lambda: "through-topic" in _mirror(stack), timeout=30, message="the sync function to mirror"
    )
    stack.gcloud_publish("dispatcher-sync", '{"all": true}')
    ctx.store().update("through-topic", {"shard": 999}, if_updated_at=None)
    stack.gcloud_publish("dispatcher-maintenance", '{"job": "recompute-next-run"}')

    def repaired() -> bool:
        doc = ctx.store().get("through-topic")
        return doc is not None and doc.data["shard"] != 999

    wait_for(repaired, timeout=30, message="the maintenance function to recompute")
    lines = stack.log_lines("fn-maintenance")
    done = [line for line in lines if line.get("job") == "recompute-next-run"]
    assert done and done[-1]["counts"]["updated"] == 1


def test_ledger_cli(ctx: OpsContext, invoke: Callable[..., Any]) -> None:
    ledger = ctx.ledger()
    slot = datetime(2026, 1, 5, 9, tzinfo=UTC)
    run = ledger.record_run("acme", slot, "manual")
    claim = ledger.claim_dispatch(run, "feed", "rss", "projects/p/tasks/abc", "collect-rss")
    ledger.mark_created(claim.dispatch_id)
    runs = json.loads(invoke("ledger", "runs", "acme", "--json").stdout)
    assert [(r["reason"], r["dispatches"], r["created"]) for r in runs] == [("manual", 1, 1)]
    rows = json.loads(
        invoke(
            "ledger", "dispatches", "acme", "--slot", "2026-01-05T10:00:00+01:00", "--json"
        ).stdout
    )
    assert [(r["source_id"], r["state"], r["task_name"]) for r in rows] == [
        ("feed", "created", "projects/p/tasks/abc")
    ]
    assert invoke("ledger", "dispatches", "acme", "--slot", "yesterday").exit_code == 2


def test_ledger_cli_shows_outcomes_and_completion(
    ctx: OpsContext, invoke: Callable[..., Any]
) -> None:
    ledger = ctx.ledger()
    slot = datetime(2026, 1, 5, 9, tzinfo=UTC)
    run = ledger.record_run("acme-outcomes", slot, "schedule")
    claims = [
        ledger.claim_dispatch(run, source, kind, f"projects/p/tasks/{source}", f"collect-{kind}")
        for source, kind in [("wire", "rss"), ("blog", "rss"), ("query", "news-api")]
    ]
    ledger.mark_created_many([c.dispatch_id for c in claims[:2]])
    reported = datetime.now(UTC)
    reports = {
        "wire": Report("succeeded", 1, reported, items=4),
        "blog": Report("failed", 2, reported, error="boom"),
    }
    for source, report in reports.items():
        ledger.record_outcome(
            "acme-outcomes",
            slot,
            source,
            report,
            max_attempts_for=lambda kind: 5,
            lease=timedelta(seconds=60),
        )
    [run_row] = json.loads(invoke("ledger", "runs", "acme-outcomes", "--json").stdout)
    assert (run_row["succeeded"], run_row["pending"], run_row["completed_at"]) == (1, 1, None)
    rows = {
        r["source_id"]: r
        for r in json.loads(invoke("ledger", "dispatches", "acme-outcomes", "--json").stdout)
    }
    assert (rows["wire"]["execution_state"], rows["wire"]["items"]) == ("succeeded", 4)
    assert (rows["blog"]["execution_state"], rows["blog"]["execution_final"]) == ("failed", False)
    assert rows["blog"]["execution_attempts"] == 2
    table = invoke("ledger", "dispatches", "acme-outcomes").stdout
    assert "failed (retrying)" in table and "boom" in table

    summary = json.loads(invoke("ledger", "outcomes", "--since", "2h", "--json").stdout)
    kinds = {k["source_kind"]: k for k in summary["kinds"]}
    assert summary["since_seconds"] == 7200
    assert (kinds["rss"]["succeeded"], kinds["rss"]["pending"]) == (1, 1)
    assert (kinds["news-api"]["dispatches"], kinds["news-api"]["not_created"]) == (1, 1)
    assert "news-api" in invoke("ledger", "outcomes").stdout
    assert invoke("ledger", "outcomes", "--since", "soon").exit_code == 2


def test_piped_tables_keep_every_cell_whole(ctx: OpsContext, ops_env: dict[str, str]) -> None:
    # An operator's `dispatcher ledger runs ... | less` (stdout not a terminal): no ellipses.
    ledger = ctx.ledger()
    run = ledger.record_run("acme-piped-output", datetime(2026, 1, 5, 9, tzinfo=UTC), "replay")
    ledger.mark_failed(
        ledger.claim_dispatch(run, "feed", "rss", "projects/p/tasks/x", "collect-rss").dispatch_id,
        "503 Service Unavailable from the collector",
    )
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | ops_env
    dispatcher = Path(sys.executable).with_name("dispatcher")

    shown = subprocess.run(
        [str(dispatcher), "ledger", "runs", "acme-piped-output"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout

    assert "…" not in shown, shown
    assert "acme-piped-output" in shown, shown
    assert "503 Service Unavailable from the collector" in shown, shown


def test_ledger_unreachable_is_one_line(
    invoke: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2")
    get_settings.cache_clear()
    try:
        result = invoke("ledger", "runs", "acme")
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    assert result.exit_code == 1 and isinstance(result.exception, CliError)
    assert "ledger database" in str(result.exception)
