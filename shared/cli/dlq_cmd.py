"""``dispatcher dlq list|show|replay|purge``: the dead-letter topics' pull subscriptions."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.cli.common import CliError, console, err_console, print_json
from shared.ops.context import OpsContext, friendly_errors

if TYPE_CHECKING:
    from shared.ops.deadletters import DeadLetterMessage, DeadLetterQueues, ReplayReport
    from shared.topology import TopicSpec

app = typer.Typer(
    help="Dead letters: list and explain them, replay them to their source topic, purge them.",
    no_args_is_help=True,
)

Topic = Annotated[
    list[str] | None,
    typer.Option(
        "--topic",
        "-t",
        help="Source topic (dispatcher-due), its DLQ topic or DLQ subscription; repeatable. "
        "Default: every topic in topics.yaml.",
    ),
]
Limit = Annotated[int | None, typer.Option(min=1, help="At most this many messages.")]
Filters = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        help="KEY=VALUE, KEY!=VALUE or KEY~TEXT on an attribute or on reason, subscription_id, "
        "message_id, source_topic, origin, data; repeatable (all must match).",
    ),
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Show what would happen; change nothing.")]
Project = Annotated[str | None, typer.Option(help="Project (default: configuration).")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _queues(project: str | None) -> tuple[OpsContext, DeadLetterQueues]:
    from shared.ops.deadletters import DeadLetterQueues
    from shared.topology import load_topology

    ctx = OpsContext(project)

    class _Sender:
        def publish(self, topic: str, data: bytes, attributes: dict[str, str]) -> str:
            return ctx.publish(topic, data, attributes)

    queues = DeadLetterQueues(
        subscriber=ctx.subscriber(),
        publisher=_Sender(),
        project=ctx.project,
        topology=load_topology(),
    )
    return ctx, queues


def _topics(names: list[str] | None) -> list[TopicSpec]:
    from shared.ops.deadletters import resolve_topics
    from shared.topology import load_topology

    return resolve_topics(load_topology(), names)


@contextmanager
def _progress(label: str, total: int | None, quiet: bool) -> Iterator[Callable[[object], None]]:
    """A progress bar on stderr for interactive runs; nothing when piped or with --json."""
    if quiet or not sys.stderr.isatty():
        yield lambda _: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} done"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=total)
        yield lambda _: progress.advance(task)


@app.command("list")
@friendly_errors
def list_(
    topic: Topic = None,
    limit: Limit = 100,
    filter_: Filters = None,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """List dead letters without consuming them."""
    from shared.ops.deadletters import parse_filters

    filters = parse_filters(filter_ or [])
    ctx, queues = _queues(project)
    try:
        letters = queues.peek(_topics(topic), limit=limit, filters=filters)
    finally:
        ctx.close()
    if as_json:
        print_json([letter.as_dict() for letter in letters])
        return
    if not letters:
        console.print("no dead letters")
        return
    table = Table("message id", "dlq topic", "reason", "subscription", "published", "data")
    for letter in letters:
        table.add_row(
            letter.message_id,
            letter.dlq_topic,
            letter.reason_class,
            letter.subscription_id or "",
            letter.publish_time.strftime("%Y-%m-%d %H:%M:%S") if letter.publish_time else "",
            _preview(letter),
        )
    console.print(table)
    console.print(f"{len(letters)} dead letter(s); details: dispatcher dlq show MESSAGE_ID")


def _preview(letter: DeadLetterMessage, width: int = 60) -> str:
    text = letter.data.decode("utf-8", errors="replace")
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("show")
@friendly_errors
def show(  # noqa: PLR0917 - each parameter is a Typer option
    message_id: Annotated[str | None, typer.Argument(help="A dead letter's message id.")] = None,
    topic: Topic = None,
    limit: Limit = 10,
    filter_: Filters = None,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Explain dead letters (one by id, or the first matching): why, where from, what to do."""
    from shared.ops.deadletters import Filter, parse_filters

    filters = parse_filters(filter_ or [])
    if message_id is not None:
        filters.append(Filter("message_id", "=", message_id))
    ctx, queues = _queues(project)
    try:
        letters = queues.peek(_topics(topic), limit=1 if message_id else limit, filters=filters)
    finally:
        ctx.close()
    if message_id is not None and not letters:
        raise CliError(f"no dead letter with message id {message_id!r} (it may have been replayed)")
    if as_json:
        print_json([letter.as_dict() for letter in letters])
        return
    if not letters:
        console.print("no dead letters")
    for letter in letters:
        _explain(letter)


def _explain(letter: DeadLetterMessage) -> None:
    a = letter.attributes
    console.rule(f"dead letter {letter.message_id} on {letter.dlq_topic}")
    rows = [
        ("why", f"{letter.reason_class}: {letter.reason}"),
        (
            "where",
            " ".join(
                f"{k.removeprefix('dlq_')}={a[k]}"
                for k in ("dlq_path", "dlq_rule", "dlq_value")
                if k in a
            ),
        ),
        ("schema rule", a.get("dlq_schema_path", "")),
        (
            "from",
            f"topic {letter.source_topic}, message {a.get('dlq_source_message_id', '?')}"
            f", function {a.get('dlq_function', '?')}"
            if letter.origin == "rejected"
            else f"topic {letter.source_topic} via "
            f"{a.get('CloudPubSubDeadLetterSourceSubscription', '?')}",
        ),
        (
            "failed at",
            a.get("dlq_failed_at", a.get("CloudPubSubDeadLetterSourceTopicPublishTime", "")),
        ),
        ("subscription", letter.subscription_id or ""),
    ]
    for key, value in rows:
        if value:
            console.print(f"[bold]{key:>13}[/]  {value}", highlight=False)
    payload = letter.payload
    body = json.dumps(payload, indent=2) if payload is not None else _preview(letter, 2000)
    console.print(f"[bold]{'data':>13}[/]  {body}", highlight=False)
    others = {k: v for k, v in a.items() if not k.startswith(("dlq_", "CloudPubSubDeadLetter"))}
    if others:
        console.print(f"[bold]{'attributes':>13}[/]  {json.dumps(others, sort_keys=True)}")
    console.print(f"[bold]{'next step':>13}[/]  {_advice(letter)}", highlight=False)


def _advice(letter: DeadLetterMessage) -> str:
    if letter.replayable is not None:
        return f"not replayable: {letter.replayable}; purge it once understood"
    replay = f"dispatcher dlq replay --topic {letter.source.name} --filter id={letter.message_id}"
    if letter.reason_class == "UnknownSubscriptionError":
        return f"add the subscription ({letter.subscription_id}), then: {replay}"
    if letter.reason_class == "SchemaValidationError":
        return "the message itself is wrong: publish a corrected one, then purge this one"
    if letter.origin == "retries-exhausted":
        return f"fix the failing dependency (function logs), then: {replay}"
    return f"fix the cause, then: {replay}"


def _summary(report: ReplayReport, as_json: bool, verb: str) -> None:
    if as_json:
        print_json(report.as_dict())
    else:
        if report.failed:
            table = Table("message id", "topic", "error", title="failed (left in the DLQ)")
            for item in report.failed:
                table.add_row(item["message_id"], item["topic"], item["error"])
            console.print(table)
        if report.skipped:
            table = Table("message id", "topic", "why", title="skipped (left in the DLQ)")
            for item in report.skipped:
                table.add_row(item["message_id"], item["topic"], item["why"])
            console.print(table)
        counts = report.counts()
        prefix = "dry run: would have " if report.dry_run else ""
        done = counts["replayed"] if verb == "replayed" else counts["purged"]
        console.print(
            f"{prefix}{verb} {done}, skipped {counts['skipped']}, failed {counts['failed']}"
        )
    if report.failed:
        raise typer.Exit(1)


@app.command("replay")
@friendly_errors
def replay(  # noqa: PLR0917 - each parameter is a Typer option
    topic: Topic = None,
    limit: Limit = None,
    filter_: Filters = None,
    dry_run: DryRun = False,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Republish dead letters to their source topic (original data and attributes); each is
    acked only after its republish succeeded. Exit 1 if any failed."""
    from shared.ops.deadletters import parse_filters

    filters = parse_filters(filter_ or [])
    ctx, queues = _queues(project)
    try:
        with _progress("replaying", limit, as_json) as tick:
            report = queues.replay(
                _topics(topic), limit=limit, filters=filters, dry_run=dry_run, on_message=tick
            )
    finally:
        ctx.close()
    _summary(report, as_json, "replayed")


@app.command("purge")
@friendly_errors
def purge(  # noqa: PLR0917 - each parameter is a Typer option
    topic: Topic = None,
    limit: Limit = None,
    filter_: Filters = None,
    dry_run: DryRun = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    project: Project = None,
    as_json: AsJson = False,
) -> None:
    """Delete (acknowledge) dead letters for good."""
    from shared.ops.deadletters import parse_filters

    filters = parse_filters(filter_ or [])
    topics = _topics(topic)
    if not dry_run and not yes:
        where = ", ".join(t.dead_letter.topic for t in topics)
        what = f" matching {' and '.join(filter_)}" if filter_ else ""
        if not typer.confirm(f"Delete every dead letter{what} on {where}?"):
            raise typer.Abort()
    ctx, queues = _queues(project)
    try:
        with _progress("purging", limit, as_json) as tick:
            report = queues.purge(
                topics, limit=limit, filters=filters, dry_run=dry_run, on_message=tick
            )
    finally:
        ctx.close()
    _summary(report, as_json, "purged")
