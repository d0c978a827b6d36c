"""``dispatcher ledger runs|dispatches|outcomes``: what was dispatched, when, which task, and what
became of it (the collectors' reported outcomes, run completion)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from shared.cli.common import console, print_json, table_time
from shared.ops.context import OpsContext, friendly_errors

app = typer.Typer(help="The PostgreSQL dispatch ledger: runs and dispatches.", no_args_is_help=True)

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def parse_instant_option(value: str | None, name: str) -> datetime | None:
    """An RFC 3339 option value as an aware datetime; a usage error (exit 2) otherwise."""
    if value is None:
        return None
    from shared.envelope import parse_rfc3339

    try:
        return parse_rfc3339(value.strip().replace(" ", "T", 1))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an RFC 3339 date-time with an offset (2026-01-05T09:00:00Z)",
            param_hint=name,
        ) from None


@app.command("runs")
@friendly_errors
def runs(
    subscription_id: str,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Newest slots first.")] = 20,
    as_json: AsJson = False,
) -> None:
    """The subscription's runs (one per slot): dispatch counts, outcomes and completion."""
    ctx = OpsContext()
    try:
        rows = ctx.ledger().runs_for(subscription_id, limit=limit)
    finally:
        ctx.close()
    if as_json:
        print_json([asdict(r) for r in rows])
        return
    if not rows:
        console.print(f"no runs recorded for {subscription_id}")
        return
    table = Table(
        "slot (UTC)",
        "reason",
        "selected",
        "dispatches",
        "created",
        "not created",
        "succeeded",
        "failed",
        "skipped",
        "lost",
        "pending",
        "completed",
        "latest error",
        title=f"runs of {subscription_id}",
    )
    for r in rows:
        table.add_row(
            table_time(r.slot),
            r.reason,
            table_time(r.selected_at),
            str(r.dispatches),
            str(r.created),
            str(r.claimed + r.failed),
            str(r.succeeded),
            str(r.failed_final),
            str(r.skipped),
            str(r.lost),
            str(r.pending),
            _completion(r.completed_at, r.run_succeeded),
            r.latest_error or "",
        )
    console.print(table)


def _completion(completed_at: datetime | None, succeeded: bool | None) -> str:
    if completed_at is None:
        return "open"
    return f"{table_time(completed_at)} {'ok' if succeeded else 'NOT OK'}"


def _execution(state: str | None, final: bool) -> str:
    if state is None:
        return "-"
    if state == "failed" and not final:
        return "failed (retrying)"
    return state


@app.command("dispatches")
@friendly_errors
def dispatches(
    subscription_id: str,
    slot: Annotated[str | None, typer.Option(help="Only this slot (RFC 3339).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: AsJson = False,
) -> None:
    """The subscription's dispatches: task, created or not, and what the collector reported."""
    when = parse_instant_option(slot, "--slot")
    ctx = OpsContext()
    try:
        rows = ctx.ledger().dispatches_for(subscription_id, slot=when, limit=limit)
    finally:
        ctx.close()
    if as_json:
        print_json([asdict(r) for r in rows])
        return
    if not rows:
        console.print(
            f"no dispatches recorded for {subscription_id}" + (f" at {slot}" if slot else "")
        )
        return
    table = Table(
        "slot (UTC)",
        "source",
        "kind",
        "state",
        "create attempts",
        "task",
        "created",
        "outcome",
        "attempts",
        "finished",
        "items",
        "last error",
        title=f"dispatches of {subscription_id}",
    )
    for r in rows:
        table.add_row(
            table_time(r.slot),
            r.source_id,
            r.source_kind,
            r.state,
            str(r.attempts),
            r.task_name.rsplit("/", 1)[-1],
            table_time(r.created_at),
            _execution(r.execution_state, r.execution_final),
            str(r.execution_attempts),
            table_time(r.finished_at),
            "-" if r.items is None else str(r.items),
            r.execution_error or r.last_error or "",
        )
    console.print(table)


@app.command("outcomes")
@friendly_errors
def outcomes(
    since: Annotated[
        str, typer.Option(help="Dispatches claimed in this window: 30m, 1h, 2d.")
    ] = "1h",
    as_json: AsJson = False,
) -> None:
    """What became of recent dispatches, per source kind: succeeded, failed, skipped, lost,
    pending (created, no final outcome yet) and not created."""
    window = parse_duration_option(since, "--since")
    ctx = OpsContext()
    try:
        rows = ctx.ledger().outcome_summary(window)
    finally:
        ctx.close()
    if as_json:
        print_json(
            {"since_seconds": int(window.total_seconds()), "kinds": [asdict(r) for r in rows]}
        )
        return
    if not rows:
        console.print(f"no dispatches in the last {since}")
        return
    table = Table(
        "kind",
        "dispatches",
        "succeeded",
        "failed",
        "skipped",
        "lost",
        "pending",
        "not created",
        title=f"outcomes of the last {since}",
    )
    for r in rows:
        table.add_row(
            r.source_kind,
            str(r.dispatches),
            str(r.succeeded),
            str(r.failed),
            str(r.skipped),
            str(r.lost),
            str(r.pending),
            str(r.not_created),
        )
    console.print(table)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration_option(value: str, name: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``2d`` as a timedelta; a usage error (exit 2) otherwise."""
    text = value.strip().lower()
    if len(text) >= 2 and text[-1] in _UNITS and text[:-1].isdigit() and int(text[:-1]) > 0:
        return timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])
    raise typer.BadParameter(
        f"{value!r} is not a duration such as 90s, 30m, 1h or 2d", param_hint=name
    )
