"""``dispatcher tick`` and ``dispatcher run``: publish a tick or a due message by hand.

Both validate the message against its contract before publishing, and print the message id.
The lead mounts them as top-level commands: ``app.command("tick")(tick)``,
``app.command("run")(run)``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from shared.cli.common import CliError, console, print_json
from shared.cli.ledger_cmd import parse_instant_option
from shared.ops.context import OpsContext, friendly_errors

TICKS_TOPIC = "dispatcher-ticks"
DUE_TOPIC = "dispatcher-due"


def _rfc3339(text: str | None, name: str) -> str | None:
    when = parse_instant_option(text, name)
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def _publish(ctx: OpsContext, topic: str, contract: str, payload: dict[str, Any]) -> str:
    from shared.contracts import get_contract

    get_contract(contract).validate(payload)
    return ctx.publish(topic, json.dumps(payload, separators=(",", ":")).encode())


def _refuse_future_tick(when: datetime, skew_seconds: float) -> None:
    """Say no before publishing what select would dead-letter (same rule, same message)."""
    from shared.usecases.select_due import TickTooFarAheadError, check_tick_skew

    try:
        check_tick_skew(when.astimezone(UTC), datetime.now(UTC), skew_seconds)
    except TickTooFarAheadError as exc:
        raise CliError(
            f"{exc.message}. Not published; --dry-run looks ahead safely, --allow-future "
            "publishes it anyway"
        ) from exc


@friendly_errors
def tick(  # noqa: PLR0917 - each parameter is a Typer option
    time: Annotated[
        str | None,
        typer.Option("--time", help="Select for this instant (RFC 3339); default: publish time."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Select and log only.")] = False,
    shard: Annotated[int | None, typer.Option(min=0, max=1023, help="Only this shard.")] = None,
    project: Annotated[str | None, typer.Option(help="Project (default: configuration).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    allow_future: Annotated[
        bool,
        typer.Option(
            "--allow-future",
            help="Publish a --time beyond max_tick_skew_seconds ahead anyway (select still "
            "dead-letters it unless its own skew allows it).",
        ),
    ] = False,
) -> None:
    """Publish a tick to dispatcher-ticks (what Cloud Scheduler sends every minute)."""
    payload: dict[str, Any] = {}
    when = parse_instant_option(time, "--time")
    instant = None if when is None else when.isoformat().replace("+00:00", "Z")
    ctx = OpsContext(project)
    if when is not None and not dry_run and not allow_future:
        _refuse_future_tick(when, ctx.settings.max_tick_skew_seconds)
    if instant is not None:
        payload["time"] = instant
    if dry_run:
        payload["dry_run"] = True
    if shard is not None:
        payload["shard"] = shard
    message_id = _publish(ctx, TICKS_TOPIC, "tick", payload)
    if as_json:
        print_json({"topic": TICKS_TOPIC, "message_id": message_id, "payload": payload})
    else:
        console.print(f"published tick {json.dumps(payload)} to {TICKS_TOPIC}: {message_id}")


@friendly_errors
def run(  # noqa: PLR0917 - each parameter is a Typer option
    subscription_id: Annotated[str, typer.Argument(help="The subscription to dispatch.")],
    slot: Annotated[
        str | None,
        typer.Option("--slot", help="The slot (RFC 3339); default: now (a manual run)."),
    ] = None,
    reason: Annotated[
        str, typer.Option(help="manual | replay | schedule | catch-up (the last two need --slot).")
    ] = "manual",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Log only, create no task.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Publish even if the subscription does not exist.")
    ] = False,
    project: Annotated[str | None, typer.Option(help="Project (default: configuration).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Publish a due message to dispatcher-due: fan out this subscription now (or for --slot)."""
    payload: dict[str, Any] = {"subscription_id": subscription_id, "reason": reason}
    instant = _rfc3339(slot, "--slot")
    if instant is not None:
        payload["slot"] = instant
    if dry_run:
        payload["dry_run"] = True
    ctx = OpsContext(project)
    if not force and ctx.store().get(subscription_id) is None:
        raise CliError(
            f"subscription {subscription_id!r} does not exist: the due message would be "
            "dead-lettered (--force publishes it anyway)"
        )
    message_id = _publish(ctx, DUE_TOPIC, "due", payload)
    if as_json:
        print_json({"topic": DUE_TOPIC, "message_id": message_id, "payload": payload})
    else:
        console.print(f"published {json.dumps(payload)} to {DUE_TOPIC}: {message_id}")
