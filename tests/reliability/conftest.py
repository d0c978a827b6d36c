"""One private stack for the whole reliability package: its tests kill and restart components,
which must not disturb the session stack other tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.reliability import FaultStack


@pytest.fixture(scope="package")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    """A running local stack (no scheduler) with fast queues, stopped after the package."""
    stack = FaultStack(tmp_path_factory.mktemp("fault-stack"))
    try:
        yield stack
    finally:
        stack.close()


@pytest.fixture(autouse=True)
def clean(faults: FaultStack) -> None:
    """Empty Firestore, ledger, collector and dead letters before each test."""
    faults.wipe()
