"""Session fixtures: one local stack of real parts for every integration and e2e test that asks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from emulators.process import pid_alive
from emulators.stack import LocalStack, StackOptions, read_record, stop_recorded
from tests.support.stack import StackHandle


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """The whole local stack (no scheduler stand-in: tests publish ticks with explicit times)."""
    state_dir = tmp_path_factory.mktemp("stack")
    local = LocalStack(StackOptions(state_dir=state_dir, scheduler=False))
    env = local.up()
    try:
        yield StackHandle(local, env)
    finally:
        record = read_record(state_dir) or {}
        pids = [int(c["pid"]) for c in record.get("components", {}).values()]
        stop_recorded(state_dir)
        survivors = [p for p in pids if pid_alive(p)]
        assert not survivors, f"stack processes survived teardown: {survivors}"


@pytest.fixture(scope="session")
def firestore_client(stack: StackHandle) -> Iterator[Any]:
    """A Firestore client on the session stack's emulator, for seeding and reading documents."""
    from google.cloud import firestore

    from tests.support.core import emulator_environment

    with emulator_environment(stack.env):
        client = firestore.Client(project=stack.project)
    yield client
    client.close()  # type: ignore[no-untyped-call]
