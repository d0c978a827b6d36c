"""``dispatcher ledger runs|dispatches``: what was dispatched, when, which task, in which state."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from shared.cli.common import console, print_json
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


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@app.command("runs")
@friendly_errors
def runs(
    subscription_id: str,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Newest slots first.")] = 20,
    as_json: AsJson = False,
) -> None:
    """The subscription's runs (one per slot) with dispatch counts per state."""
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
        "claimed",
        "failed",
        "latest error",
        title=f"runs of {subscription_id}",
    )
    for r in rows:
        table.add_row(
            _when(r.slot),
            r.reason,
            _when(r.selected_at),
            str(r.dispatches),
            str(r.created),
            str(r.claimed),
            str(r.failed),
            r.latest_error or "",
        )
    console.print(table)


@app.command("dispatches")
@friendly_errors
def dispatches(
    subscription_id: str,
    slot: Annotated[str | None, typer.Option(help="Only this slot (RFC 3339).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000)] = 100,
    as_json: AsJson = False,
) -> None:
    """The subscription's dispatches: source, task name, queue, state, attempts, last error."""
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
        "attempts",
        "task",
        "created",
        "last error",
        title=f"dispatches of {subscription_id}",
    )
    for r in rows:
        table.add_row(
            _when(r.slot),
            r.source_id,
            r.source_kind,
            r.state,
            str(r.attempts),
            r.task_name.rsplit("/", 1)[-1],
            _when(r.created_at),
            r.last_error or "",
        )
    console.print(table)
