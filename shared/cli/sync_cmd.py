"""``dispatcher sync``: make the PostgreSQL subscription mirror equal to Firestore, now.

Runs the same use case as the sync function, in this process (``--publish`` sends the request
to the ``dispatcher-sync`` topic instead). The lead mounts it: ``app.command("sync")(sync)``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from shared.cli.common import console, print_json
from shared.ops.context import OpsContext, friendly_errors

SYNC_TOPIC = "dispatcher-sync"


@friendly_errors
def sync(
    subscription_id: Annotated[
        str | None, typer.Argument(help="Only this subscription (default: all).")
    ] = None,
    publish: Annotated[
        bool, typer.Option("--publish", help="Publish the request to dispatcher-sync instead.")
    ] = False,
    project: Annotated[str | None, typer.Option(help="Project (default: configuration).")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Copy Firestore subscriptions into the ledger's mirror (insert, update, delete)."""
    from shared.contracts import get_contract
    from shared.usecases.sync import run_sync

    payload: dict[str, Any] = (
        {"subscription_id": subscription_id} if subscription_id else {"all": True}
    )
    get_contract("sync").validate(payload)
    ctx = OpsContext(project)
    try:
        if publish:
            message_id = ctx.publish(SYNC_TOPIC, json.dumps(payload).encode())
            if as_json:
                print_json({"topic": SYNC_TOPIC, "message_id": message_id, "payload": payload})
            else:
                console.print(f"published {json.dumps(payload)} to {SYNC_TOPIC}: {message_id}")
            return
        counts = run_sync(
            payload,
            store_factory=ctx.store,
            ledger_factory=ctx.ledger,
            page_size=ctx.settings.firestore_page_size,
        )
    finally:
        ctx.close()
    if as_json:
        print_json(counts.as_dict())
    else:
        console.print(
            "mirror synced: " + ", ".join(f"{k} {v}" for k, v in counts.as_dict().items())
        )
