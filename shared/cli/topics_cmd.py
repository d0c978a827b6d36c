"""``dispatcher topics apply``: make Pub/Sub match topics.yaml."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from shared.cli.common import console, print_json

app = typer.Typer(help="Topics and subscriptions declared in topics.yaml.", no_args_is_help=True)


@app.command("apply")
def apply(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change.")] = False,
    project: Annotated[str | None, typer.Option(help="Project (default: configuration).")] = None,
    endpoint: Annotated[
        list[str] | None,
        typer.Option(
            help="Push endpoint per function, e.g. --endpoint select=https://… (repeatable)."
        ),
    ] = None,
    push_service_account: Annotated[
        str | None, typer.Option(help="OIDC service account for push (production).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create or update topics, push subscriptions and dead-letter wiring, idempotently."""
    import google.cloud.pubsub_v1 as pubsub_v1

    from shared.config import get_settings
    from shared.pubsub_admin import PushAuth, apply_topology
    from shared.topology import load_topology

    endpoints: dict[str, str] = {}
    for item in endpoint or []:
        name, _, url = item.partition("=")
        if not url:
            raise typer.BadParameter(
                f"expected FUNCTION=URL, got {item!r}", param_hint="--endpoint"
            )
        endpoints[name] = url
    topology = load_topology()
    auth = PushAuth(push_service_account) if push_service_account else None
    changes = apply_topology(
        topology,
        project or get_settings().project,
        endpoints,
        publisher=pubsub_v1.PublisherClient(),
        subscriber=pubsub_v1.SubscriberClient(),
        push_auth=auth,
        dry_run=dry_run,
    )
    if as_json:
        print_json([asdict(c) for c in changes])
        return
    table = Table("action", "kind", "name", "detail", title="dry run" if dry_run else None)
    for c in changes:
        table.add_row(c.action, c.kind, c.name, c.detail)
    console.print(table)
