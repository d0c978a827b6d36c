"""``dispatcher deliveries list|show``: the email transactions, and how to replay one by hand."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from shared.cli.common import CliError, console, print_json, table_time
from shared.instants import format_slot
from shared.ops.context import OpsContext, friendly_errors

app = typer.Typer(
    help="Email deliveries: one row per (delivery, slot, recipient) -- queued, sending, sent, "
    "failed.",
    no_args_is_help=True,
)

AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
STATES = ("queued", "sending", "sent", "failed")


def _emails(ctx: OpsContext) -> Any:
    from shared.ledger.deliveries import EmailLedger

    return EmailLedger(ctx.ledger().pool)


@app.command("list")
@friendly_errors
def list_deliveries(
    subscription_id: Annotated[str | None, typer.Argument(help="Only this subscription.")] = None,
    state: Annotated[str | None, typer.Option(help="queued | sending | sent | failed")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Newest slots first.")] = 50,
    as_json: AsJson = False,
) -> None:
    """Email transactions, newest slot first: recipient, state, attempts, Message-ID, error."""
    if state is not None and state not in STATES:
        raise typer.BadParameter(
            f"{state!r} is not one of {', '.join(STATES)}", param_hint="--state"
        )
    ctx = OpsContext()
    try:
        rows = _emails(ctx).list(subscription_id, state=state, limit=limit)
    finally:
        ctx.close()
    if as_json:
        print_json([asdict(r) for r in rows])
        return
    if not rows:
        console.print(
            "no email deliveries recorded" + (f" for {subscription_id}" if subscription_id else "")
        )
        return
    table = Table(
        "id",
        "subscription",
        "delivery",
        "slot (UTC)",
        "recipient",
        "state",
        "attempts",
        "task",
        "sent",
        "last error",
        title="email deliveries",
    )
    for r in rows:
        table.add_row(
            str(r.id),
            r.subscription_id,
            r.delivery_id,
            table_time(r.slot),
            r.recipient,
            r.state,
            str(r.attempts),
            r.task_state,
            table_time(r.sent_at),
            r.last_error or "",
        )
    console.print(table)


def replay_command(row: Any, queue: str, location: str, url: str, service_account: str) -> str:
    """The ``gcloud tasks create-http-task`` line that asks the deliver function for ``row``."""
    body: dict[str, Any] = {
        "delivery_key": {
            "subscription_id": row.subscription_id,
            "delivery_id": row.delivery_id,
            "slot": format_slot(row.slot),
            "recipient": row.recipient,
        },
        "format": row.format,
    }
    if row.run_id is not None:
        body["run_id"] = row.run_id
    return " ".join(
        [
            "gcloud tasks create-http-task",
            f"--queue={shlex.quote(queue)}",
            f"--location={shlex.quote(location)}",
            f"--url={shlex.quote(url)}",
            "--method=POST",
            "--header=Content-Type:application/json",
            f"--oidc-service-account-email={shlex.quote(service_account)}",
            f"--body-content={shlex.quote(json.dumps(body, sort_keys=True))}",
        ]
    )


@app.command("show")
@friendly_errors
def show(
    row_id: Annotated[int, typer.Argument(help="The id `deliveries list` shows.")],
    as_json: AsJson = False,
) -> None:
    """One email transaction in full, with the gcloud command that replays it."""
    from shared.email_settings import load_email_settings

    ctx = OpsContext()
    try:
        row = _emails(ctx).get_by_id(row_id)
        settings = ctx.settings
    finally:
        ctx.close()
    if row is None:
        raise CliError(f"no email delivery with id {row_id}")
    email = load_email_settings()
    replay = replay_command(
        row, email.queue, settings.tasks_location, email.deliver_url, email.service_account
    )
    if as_json:
        print_json({**asdict(row), "replay": replay})
        return
    for name, value in asdict(row).items():
        console.print(
            f"[bold]{name}[/bold]: {value if value is not None else '-'}", highlight=False
        )
    note = {
        "sent": "a replay answers 'already-sent' and sends nothing",
        "failed": "a replay answers 'already-failed': the refusal is final for this key",
    }.get(row.state, "a replay sends it if no attempt holds the row")
    console.print(f"\nreplay ({note}):\n  {replay}", highlight=False, soft_wrap=True)
