"""The ``dispatcher`` command line: one command per 3 a.m. action, with a clear answer.

Exit codes scripts can trust: 0 ok, 1 failure, 2 usage. User mistakes print one line on stderr,
never a stack trace.
"""

from __future__ import annotations

import sys

import typer

from shared.cli import (
    deliveries_cmd,
    dlq_cmd,
    ledger_cmd,
    publish_cmd,
    schemas_cmd,
    stack_cmd,
    status_cmd,
    subscriptions_cmd,
    sync_cmd,
    topics_cmd,
)
from shared.cli.common import CliError, fail

app = typer.Typer(
    name="dispatcher",
    help="Operate the Subscription Dispatcher: local stack, topics, schemas, subscriptions.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(stack_cmd.app, name="stack")
app.add_typer(topics_cmd.app, name="topics")
app.add_typer(schemas_cmd.app, name="schemas")
app.add_typer(subscriptions_cmd.app, name="subscriptions")
app.add_typer(dlq_cmd.app, name="dlq")
app.add_typer(ledger_cmd.app, name="ledger")
app.add_typer(deliveries_cmd.app, name="deliveries")
app.command("tick")(publish_cmd.tick)
app.command("run")(publish_cmd.run)
app.command("sync")(sync_cmd.sync)
app.command("status")(status_cmd.status)


def main() -> None:
    """Console entry point: run the app, turning known errors into one line and exit code 1."""
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        result = app(standalone_mode=False)
        if isinstance(result, int) and result:
            sys.exit(result)
    except CliError as exc:
        fail(str(exc))
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        fail("aborted")
    except Exception as exc:  # click's usage errors carry their own exit code (2)
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        from shared.cli.common import known_error

        message = known_error(exc)
        if message is None:
            raise
        fail(message)
