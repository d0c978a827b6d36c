"""``dispatcher status``: one screen (or one JSON document) that says whether anything needs a
person, and what. Exit code 1 when something does. The checks are in :mod:`shared.ops.status`.

Mounted as a top-level command: ``app.command("status")(status)``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from shared.cli.common import console, print_json
from shared.ops.context import OpsContext, friendly_errors, utcnow

if TYPE_CHECKING:
    from shared.ops.status import StatusContext, StatusReport

_STYLE = {"ok": "green", "attention": "bold red", "unknown": "yellow"}


@friendly_errors
def status(
    project: Annotated[str | None, typer.Option(help="Project (default: configuration).")] = None,
    lag_minutes: Annotated[
        int,
        typer.Option(min=1, help="Overdue subscriptions and backlog older than this need a look."),
    ] = 5,
    stuck_minutes: Annotated[
        int, typer.Option(min=1, help="A dispatch claimed this long without a task is stuck.")
    ] = 15,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Last tick's lag, backlog, dead letters, failed and stuck dispatches, queue states.

    Exits 1 when anything needs attention, naming each problem.
    """
    from shared.ops.status import run_status

    ops = OpsContext(project)
    try:
        report = run_status(
            _context(
                ops, lag=timedelta(minutes=lag_minutes), stuck=timedelta(minutes=stuck_minutes)
            )
        )
    finally:
        ops.close()
    if as_json:
        print_json(report.as_dict())
    else:
        _print(report)
    if report.needs_attention:
        raise typer.Exit(1)


def _context(ops: OpsContext, *, lag: timedelta, stuck: timedelta) -> StatusContext:
    from shared.clients import build_tasks_client
    from shared.ops import status_sources as sources
    from shared.ops.deadletters import DeadLetterQueues
    from shared.ops.status import StatusContext
    from shared.topology import load_topology

    settings = replace(ops.settings, project=ops.project)
    topology = load_topology()

    def dead_letters() -> DeadLetterQueues:
        # Read only: peek never publishes, so no publisher is needed.
        return DeadLetterQueues(
            subscriber=ops.subscriber(), publisher=None, project=ops.project, topology=topology
        )

    backlog = (
        sources.emulator_backlog
        if settings.pubsub_emulator_host
        else sources.monitoring_backlog(ops.project, sources.authorized_session)
    )
    return StatusContext(
        settings=settings,
        topology=topology,
        now=utcnow(),
        store=ops.store,
        dead_letters=dead_letters,
        dispatch_health=lambda after: sources.dispatch_health(ops.ledger(), after),
        queue_states=lambda: sources.queue_states(
            settings, build_tasks_client(settings.cloud_tasks_emulator_host)
        ),
        backlog=backlog,
        lag=lag,
        stuck_after=stuck,
        outcomes=lambda window: ops.ledger().outcome_summary(window),
    )


def _print(report: StatusReport) -> None:
    table = Table("check", "state", "summary", title=f"dispatcher status: {report.project}")
    for check in report.checks:
        style = _STYLE[check.state]
        table.add_row(check.name, f"[{style}]{check.state}[/]", check.summary)
    console.print(table)
    if report.needs_attention:
        console.print("[bold red]needs attention:[/]")
        for problem in report.problems:
            console.print(f"  - {problem}", highlight=False, soft_wrap=True)
    else:
        console.print("[green]nothing needs attention[/]")
