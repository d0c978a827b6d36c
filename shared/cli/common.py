"""Helpers shared by the CLI commands: error reporting and output formats."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime
from typing import Any, NoReturn

from rich.console import Console

# Rich lays tables out for 80 columns when stdout is not a terminal, and cuts cells with "…":
# `dispatcher ledger runs acme | less`, or a paste into an incident document, would lose the
# slots and errors it was run for. Piped output gets room instead; a terminal (or an explicit
# COLUMNS) keeps its own width.
PIPED_WIDTH = 200


def _width() -> int | None:
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None
    return PIPED_WIDTH


console = Console(width=_width())
err_console = Console(stderr=True)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit code 1."""


def fail(message: str, code: int = 1) -> NoReturn:
    # soft_wrap: one line whatever the terminal width, so scripts and logs get it whole.
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def known_error(exc: BaseException) -> str | None:
    """The one-line message for errors a user can fix, or None for a real bug."""
    from emulators.process import StackError
    from shared.config import ConfigError
    from shared.topology import TopologyError

    if isinstance(exc, StackError | ConfigError | TopologyError):
        return str(exc)
    try:
        from google.api_core import exceptions as gexc
    except ImportError:  # pragma: no cover - always installed
        return None
    if isinstance(exc, gexc.GoogleAPICallError):
        return f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": ")
    return None


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def table_time(value: datetime | None) -> str:
    """An instant as a table cell (UTC to the second), ``-`` for none."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"
