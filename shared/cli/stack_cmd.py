"""``dispatcher stack up|down|status|logs``: the local stack of real parts."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from shared.cli.common import CliError, console, print_json

app = typer.Typer(
    help="Start, inspect and stop the local stack (emulators, PostgreSQL, functions).",
    no_args_is_help=True,
)

StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", help="Where the stack keeps its state (default: .dispatcher/)."),
]


def _state_dir(value: Path | None) -> Path:
    from emulators.stack import default_state_dir

    return (value or default_state_dir()).absolute()


@app.command()
def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return once the stack is ready.")
    ] = False,
    state_dir: StateDir = None,
    project: Annotated[
        str, typer.Option(help="Project id the emulators use.")
    ] = "dispatcher-local",
    scheduler: Annotated[bool, typer.Option(help="Run the Cloud Scheduler stand-in.")] = True,
    port: Annotated[
        list[str] | None,
        typer.Option(
            "--port", help="Fix a component's port, e.g. --port pubsub=8085 (repeatable)."
        ),
    ] = None,
) -> None:
    """Start every component, wait until each is ready, write .dispatcher/stack.env."""
    from emulators.stack import LocalStack, StackOptions

    ports: dict[str, int] = {}
    for item in port or []:
        name, _, number = item.partition("=")
        if not number.isdigit():
            raise typer.BadParameter(f"expected COMPONENT=PORT, got {item!r}", param_hint="--port")
        ports[name] = int(number)
    stack = LocalStack(
        StackOptions(
            state_dir=_state_dir(state_dir), project=project, ports=ports, scheduler=scheduler
        )
    )
    console.print("[bold]Starting the local stack…[/]")
    stack.up()
    _print_status(stack.state_dir)
    console.print(
        f"Ready in {stack.timings['up']:.1f}s. Environment: [bold]source {stack.env_path}[/]"
    )
    if detach:
        console.print("Stop it with [bold]dispatcher stack down[/].")
        return
    console.print("Running in the foreground; Ctrl-C stops everything.")
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(1.0):
            dead = [c.name for c in stack.status() if not c.alive]
            if dead:
                console.print(f"[red]component(s) exited: {', '.join(dead)}; stopping[/]")
                break
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop_started()
        console.print("Stack stopped.")


@app.command()
def down(state_dir: StateDir = None) -> None:
    """Stop every component of the stack and remove stack.env."""
    from emulators.stack import stop_recorded

    started = time.monotonic()
    stopped = stop_recorded(_state_dir(state_dir))
    if not stopped:
        console.print("No stack was running.")
        return
    console.print(f"Stopped {', '.join(stopped)} in {time.monotonic() - started:.1f}s.")


@app.command()
def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each component: pid, alive, answering on its port, URL, log file."""
    from emulators.stack import stack_status

    components = stack_status(_state_dir(state_dir))
    if as_json:
        print_json([asdict(c) for c in components])
    elif not components:
        console.print("No stack is running.")
    else:
        _print_status(_state_dir(state_dir))
    if not components or not all(c.ready for c in components):
        raise typer.Exit(1)


@app.command()
def logs(
    component: Annotated[
        str | None, typer.Argument(help="e.g. pubsub, fn-select (default: all)")
    ] = None,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
    state_dir: StateDir = None,
) -> None:
    """Print the last lines of a component's log (or of every log)."""
    from emulators.process import StackError
    from emulators.stack import component_log

    try:
        text = component_log(_state_dir(state_dir), component, lines)
    except StackError as exc:
        raise CliError(str(exc)) from exc
    console.print(text, markup=False, highlight=False)


def _print_status(state_dir: Path) -> None:
    from emulators.stack import stack_status

    table = Table("component", "pid", "state", "url", "log")
    for c in stack_status(state_dir):
        state = (
            "[green]ready[/]" if c.ready else ("[yellow]starting[/]" if c.alive else "[red]dead[/]")
        )
        table.add_row(c.name, str(c.pid), state, c.url, c.log)
    console.print(table)
