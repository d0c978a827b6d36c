"""``dispatcher subscriptions add|import|list|show|pause|resume|delete|validate``."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shared.cli.common import CliError, console, err_console, print_json
from shared.ops.context import OpsContext, friendly_errors, utcnow

if TYPE_CHECKING:
    from shared.ops.subscriptions import Candidate

app = typer.Typer(
    help="Subscriptions in Firestore: add, import, inspect, pause, resume, delete, validate.",
    no_args_is_help=True,
)

Project = Annotated[str | None, typer.Option(help="Project (default: configuration).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return "" if value is None else str(value)


def _candidates(files: list[Path]) -> list[Candidate]:
    from shared.ops.subscriptions import read_file

    out: list[Candidate] = []
    for path in files:
        if str(path) != "-" and not path.is_file():
            raise typer.BadParameter(f"{path} is not a file", param_hint="FILES")
        out.extend(read_file(path))
    return out


def _check(
    ctx: OpsContext, candidates: list[Candidate], as_json: bool, what: str = "invalid"
) -> None:
    from shared.ops.subscriptions import validate_candidates

    errors = validate_candidates(
        candidates,
        now=utcnow(),
        shard_count=ctx.settings.shard_count,
        known_kinds=ctx.settings.queues.keys(),
    )
    if not errors:
        return
    if as_json:
        print_json({"valid": False, "errors": [e.as_dict() for e in errors]})
    else:
        for error in errors:
            err_console.print(f"[red]{what}:[/] {error}", highlight=False)
    raise CliError(f"{len(errors)} of {len(candidates)} subscription(s) invalid; nothing written")


@app.command("validate")
@friendly_errors
def validate(
    files: Annotated[list[Path], typer.Argument(help="YAML or JSON files ('-': stdin).")],
    as_json: AsJson = False,
) -> None:
    """Check subscription files against the schema and the configuration; write nothing."""
    candidates = _candidates(files)
    ctx = OpsContext()
    _check(ctx, candidates, as_json)
    if as_json:
        print_json({"valid": True, "subscriptions": [c.id for c in candidates]})
    else:
        console.print(f"[green]valid:[/] {len(candidates)} subscription(s)")


@app.command("import")
@friendly_errors
def import_(
    files: Annotated[list[Path], typer.Argument(help="YAML or JSON files ('-': stdin).")],
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite existing subscriptions (keeps created_at).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate only.")] = False,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Import subscriptions: all are validated first; if any is invalid nothing is written."""
    from shared.ops.subscriptions import ImportReport, write_subscription

    candidates = _candidates(files)
    ctx = OpsContext(project)
    _check(ctx, candidates, as_json)
    report = ImportReport()
    if not dry_run:
        store = ctx.store()
        for candidate in candidates:
            assert candidate.id is not None  # validated above
            report.results.append(
                write_subscription(
                    store,
                    candidate.id,
                    candidate.raw,
                    now=utcnow,
                    shard_count=ctx.settings.shard_count,
                    known_kinds=ctx.settings.queues.keys(),
                    replace=replace,
                    origin=candidate.origin,
                    schedules=ctx.digest_schedules(),
                )
            )
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "counts": report.counts(),
                "results": [
                    {"id": r.id, "action": r.action, "next_run_at": _iso(r.next_run_at)}
                    for r in report.results
                ],
            }
        )
        return
    if dry_run:
        console.print(f"[green]valid:[/] {len(candidates)} subscription(s); dry run, none written")
        return
    table = Table("id", "action", "next run (UTC)")
    for r in report.results:
        table.add_row(r.id, r.action, _iso(r.next_run_at))
    console.print(table)
    counts = report.counts()
    console.print(", ".join(f"{k} {v}" for k, v in counts.items() if v))
    if counts["exists"]:
        err_console.print("some already existed and were left alone; --replace overwrites them")


@app.command("add")
@friendly_errors
def add(  # noqa: PLR0917 - each parameter is a Typer option
    subscription_id: Annotated[
        str | None, typer.Argument(help="Subscription id (or give 'id' in --file).")
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="YAML/JSON file.")] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    cron: Annotated[str | None, typer.Option(help="5-field cron expression.")] = None,
    timezone: Annotated[str, typer.Option(help="IANA time zone of --cron.")] = "UTC",
    every: Annotated[int | None, typer.Option(help="Interval in seconds (whole minutes).")] = None,
    source: Annotated[
        list[str] | None,
        typer.Option(help="ID:KIND or ID:KIND:{json params} (repeatable)."),
    ] = None,
    starts_at: Annotated[str | None, typer.Option(help="RFC 3339.")] = None,
    ends_at: Annotated[str | None, typer.Option(help="RFC 3339 deadline.")] = None,
    catch_up: Annotated[str | None, typer.Option(help="skip | latest | all")] = None,
    jitter: Annotated[int | None, typer.Option(help="Seconds 0-59.")] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create paused.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite if it exists.")] = False,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Add one subscription, from --file or from options."""
    from shared.ops.subscriptions import Candidate, write_subscription

    if file is not None:
        candidates = _candidates([file])
        if len(candidates) != 1:
            raise typer.BadParameter(
                "the file must hold exactly one subscription", param_hint="--file"
            )
        candidate = candidates[0]
        if subscription_id is not None:
            candidate = Candidate(subscription_id, candidate.raw, candidate.origin)
    else:
        if name is None or not source or (cron is None) == (every is None):
            raise typer.BadParameter(
                "give --file, or --name, one of --cron/--every, and at least one --source"
            )
        raw: dict[str, Any] = {
            "name": name,
            "schedule": {"cron": cron, "timezone": timezone} if cron else {"every": every},
            "sources": [_source(s) for s in source],
            "paused": paused,
        }
        for key, value in (("starts_at", starts_at), ("ends_at", ends_at)):
            if value is not None:
                raw[key] = value
        if catch_up is not None:
            raw["catch_up"] = {"policy": catch_up}
        if jitter is not None:
            raw["jitter_seconds"] = jitter
        candidate = Candidate(subscription_id, raw, "options")
    ctx = OpsContext(project)
    _check(ctx, [candidate], as_json)
    assert candidate.id is not None
    result = write_subscription(
        ctx.store(),
        candidate.id,
        candidate.raw,
        now=utcnow,
        shard_count=ctx.settings.shard_count,
        known_kinds=ctx.settings.queues.keys(),
        replace=replace,
        origin=candidate.origin,
        schedules=ctx.digest_schedules(),
    )
    if result.action == "exists":
        raise CliError(f"subscription {result.id!r} already exists (--replace overwrites it)")
    if as_json:
        print_json(
            {"id": result.id, "action": result.action, "next_run_at": _iso(result.next_run_at)}
        )
        return
    console.print(
        f"{result.action} [bold]{result.id}[/], next run {_iso(result.next_run_at) or '-'}"
    )


def _source(text: str) -> dict[str, Any]:
    parts = text.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise typer.BadParameter(f"expected ID:KIND[:JSON], got {text!r}", param_hint="--source")
    params: Any = {}
    if len(parts) == 3:
        try:
            params = json.loads(parts[2])
        except ValueError as exc:
            raise typer.BadParameter(f"params of {parts[0]!r} are not JSON: {exc}") from None
    return {"id": parts[0], "kind": parts[1], "params": params}


@app.command("list")
@friendly_errors
def list_(
    status: Annotated[str | None, typer.Option(help="Only this status (active | expired).")] = None,
    paused: Annotated[
        bool | None, typer.Option("--paused/--running", help="Only paused / only running.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 200,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """List subscriptions in id order."""
    from shared.ops.store import iter_all

    ctx = OpsContext(project)
    rows: list[dict[str, Any]] = []
    for page in iter_all(ctx.store(), min(limit, ctx.settings.firestore_page_size)):
        for doc in page:
            data = doc.data
            if status is not None and data.get("status") != status:
                continue
            if paused is not None and bool(data.get("paused")) != paused:
                continue
            schedule = data.get("schedule") or {}
            rows.append(
                {
                    "id": doc.id,
                    "name": data.get("name"),
                    "status": data.get("status"),
                    "paused": bool(data.get("paused")),
                    "schedule": (
                        f"cron {schedule.get('cron')} {schedule.get('timezone', 'UTC')}"
                        if "cron" in schedule
                        else f"every {schedule.get('every')}s"
                    ),
                    "sources": len(data.get("sources") or []),
                    "next_run_at": _iso(data.get("next_run_at")) or None,
                    "shard": data.get("shard"),
                }
            )
        if len(rows) >= limit:
            break
    rows = rows[:limit]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "name", "status", "paused", "schedule", "sources", "next run (UTC)")
    for row in rows:
        table.add_row(
            row["id"],
            str(row["name"]),
            str(row["status"]),
            "yes" if row["paused"] else "",
            row["schedule"],
            str(row["sources"]),
            row["next_run_at"] or "-",
        )
    console.print(table)


@app.command("show")
@friendly_errors
def show(
    subscription_id: str,
    count: Annotated[int, typer.Option(min=1, max=100, help="How many next runs.")] = 5,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """One subscription and its next run times, in the subscription's time zone."""
    from zoneinfo import ZoneInfo

    from shared.ops.subscriptions import (
        SubscriptionNotFound,
        display_zone,
        next_runs,
        parse_stored,
        to_json_compatible,
    )

    ctx = OpsContext(project)
    doc = ctx.store().get(subscription_id)
    if doc is None:
        raise SubscriptionNotFound(subscription_id)
    subscription = parse_stored(doc)
    zone = display_zone(subscription)
    upcoming = [] if subscription.status == "expired" else next_runs(subscription, utcnow(), count)
    local = [t.astimezone(ZoneInfo(zone)) for t in upcoming]
    # What select will actually do with the digests is in delivery_schedules, not in the
    # subscription: an operator asking "when is the next digest?" needs these documents.
    digests = [
        {
            "delivery": s.delivery_id,
            "cron": s.cron,
            "timezone": s.timezone,
            "next_run_at": _iso(s.next_run_at) if s.next_run_at else None,
            "last_slot": _iso(s.last_slot) if s.last_slot else None,
        }
        for s in ctx.digest_schedules().for_subscription(subscription_id)
    ]
    if as_json:
        print_json(
            {
                "id": doc.id,
                "document": to_json_compatible(dict(doc.data)),
                "time_zone": zone,
                "next_runs": [t.isoformat() for t in local],
                "next_runs_utc": [_iso(t) for t in upcoming],
                "digest_schedules": digests,
            }
        )
        return
    data = to_json_compatible(dict(doc.data))
    console.print(f"[bold]{doc.id}[/] — {data.get('name')}")
    for key in (
        "status",
        "paused",
        "schedule",
        "starts_at",
        "ends_at",
        "catch_up",
        "jitter_seconds",
        "next_run_at",
        "shard",
        "created_at",
        "updated_at",
    ):
        if key in data:
            console.print(f"  {key}: {json.dumps(data[key])}", highlight=False)
    sources = Table("source", "kind", "params")
    for item in data.get("sources", []):
        sources.add_row(item.get("id"), item.get("kind"), json.dumps(item.get("params", {})))
    console.print(sources)
    if digests:
        table = Table("digest", "cron", "time zone", "next (UTC)", "last sent slot (UTC)")
        for d in digests:
            table.add_row(
                d["delivery"],
                d["cron"] or "-",
                d["timezone"] or "-",
                d["next_run_at"] or "retired",
                d["last_slot"] or "-",
            )
        console.print(table)
    if subscription.status == "expired":
        console.print("expired: no further runs")
        return
    note = " (paused: these run only after resume)" if subscription.paused else ""
    console.print(f"next {len(local)} runs in {zone}{note}:")
    for when in local:
        console.print(f"  {when.strftime('%Y-%m-%d %H:%M %Z (%z)')}", highlight=False)


def _set_paused(
    subscription_ids: list[str], paused: bool, project: str | None, as_json: bool
) -> None:
    from shared.ops.subscriptions import set_paused

    ctx = OpsContext(project)
    results = [
        set_paused(ctx.store(), s, paused, now=utcnow, schedules=ctx.digest_schedules())
        for s in subscription_ids
    ]
    if as_json:
        print_json(
            [
                {
                    "id": r.id,
                    "changed": r.changed,
                    "paused": r.paused,
                    "status": r.status,
                    "next_run_at": _iso(r.next_run_at) or None,
                }
                for r in results
            ]
        )
        return
    verb = "paused" if paused else "resumed"
    for r in results:
        if not r.changed:
            console.print(f"{r.id}: already {verb}")
        elif paused:
            console.print(f"{r.id}: paused (next_run_at cleared)")
        else:
            console.print(
                f"{r.id}: resumed, next run {_iso(r.next_run_at) or '- (' + r.status + ')'}"
            )


@app.command("pause")
@friendly_errors
def pause(
    subscription_ids: Annotated[list[str], typer.Argument(help="Subscription ids.")],
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Pause: nothing is dispatched until resumed (idempotent)."""
    _set_paused(subscription_ids, True, project, as_json)


@app.command("resume")
@friendly_errors
def resume(
    subscription_ids: Annotated[list[str], typer.Argument(help="Subscription ids.")],
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Resume from now: slots that passed while paused are not replayed (idempotent)."""
    _set_paused(subscription_ids, False, project, as_json)


@app.command("delete")
@friendly_errors
def delete(
    subscription_ids: Annotated[list[str], typer.Argument(help="Subscription ids.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Delete subscriptions (their ledger history stays until pruned)."""
    if not yes and not typer.confirm(f"Delete {', '.join(subscription_ids)}?"):
        raise typer.Abort()
    from shared.ops.subscriptions import delete_subscription

    ctx = OpsContext(project)
    results = {
        s: delete_subscription(ctx.store(), s, now=utcnow, schedules=ctx.digest_schedules())
        for s in subscription_ids
    }
    if as_json:
        print_json([{"id": s, "deleted": d} for s, d in results.items()])
    else:
        for s, deleted in results.items():
            console.print(f"{s}: {'deleted' if deleted else 'did not exist'}")
    missing = [s for s, d in results.items() if not d]
    if missing:
        raise CliError(f"not found: {', '.join(missing)}")
