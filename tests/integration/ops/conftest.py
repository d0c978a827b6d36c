"""Ops tests on the session stack: the test process talks to its emulators and PostgreSQL."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import typer
from typer.testing import CliRunner

from shared.config import get_settings
from tests.support.stack import StackHandle

_ENV_KEYS = (
    "GOOGLE_CLOUD_PROJECT",
    "PUBSUB_EMULATOR_HOST",
    "FIRESTORE_EMULATOR_HOST",
    "CLOUD_TASKS_EMULATOR_HOST",
    "DATABASE_URL",
    "COLLECTOR_URL",
)
DLQ_SUBSCRIPTIONS = [
    "dispatcher-ticks-dlq-sub",
    "dispatcher-due-dlq-sub",
    "dispatcher-maintenance-dlq-sub",
    "dispatcher-sync-dlq-sub",
]
T = TypeVar("T")


@pytest.fixture(scope="module")
def ops_env(stack: StackHandle) -> Iterator[dict[str, str]]:
    """Point this process (clients, settings) at the stack; restore afterwards."""
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    os.environ.update({k: stack.env[k] for k in _ENV_KEYS})
    get_settings.cache_clear()
    try:
        yield {k: stack.env[k] for k in _ENV_KEYS}
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


@pytest.fixture(autouse=True)
def clean(ops_env: dict[str, str], stack: StackHandle) -> None:
    """Empty Firestore, the ledger and every dead-letter subscription before each test."""
    stack.wipe_firestore()
    stack.wipe_ledger()
    stack.drain(DLQ_SUBSCRIPTIONS)


def cli() -> typer.Typer:
    """The ops sub-apps mounted the way the lead mounts them in shared/cli/app.py."""
    from shared.cli import dlq_cmd, ledger_cmd, publish_cmd, subscriptions_cmd, sync_cmd

    root = typer.Typer(pretty_exceptions_enable=False)
    root.add_typer(subscriptions_cmd.app, name="subscriptions")
    root.add_typer(dlq_cmd.app, name="dlq")
    root.add_typer(ledger_cmd.app, name="ledger")
    root.command("tick")(publish_cmd.tick)
    root.command("run")(publish_cmd.run)
    root.command("sync")(sync_cmd.sync)
    return root


@pytest.fixture
def invoke() -> Callable[..., Any]:
    """Run ``dispatcher <args>`` in-process; returns click's Result."""
    runner = CliRunner()
    app = cli()

    def run(*args: str, input: str | None = None) -> Any:
        return runner.invoke(app, list(args), input=input)

    return run
