"""The one Firestore store's admin writes on the emulator: preconditions, not read-then-write."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shared.dal.records import AlreadyExists, StoreConflict
from shared.ops.context import OpsContext

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx(ops_env: dict[str, str]) -> Iterator[OpsContext]:
    context = OpsContext()
    try:
        yield context
    finally:
        context.close()


def test_conditional_writes_and_delete_on_firestore(ctx: OpsContext) -> None:
    store = ctx.store()
    store.create("doc", {"name": "a", "status": "active", "extra": 1})
    with pytest.raises(AlreadyExists):
        store.create("doc", {"name": "b"})
    first = store.get("doc")
    assert first is not None and first.update_time is not None

    store.update("doc", {"name": "b"}, if_updated_at=first.update_time)
    # Written since `first` was read: a write conditioned on it is refused, nothing changes.
    with pytest.raises(StoreConflict):
        store.update("doc", {"name": "c"}, if_updated_at=first.update_time)
    with pytest.raises(StoreConflict):
        store.replace("doc", {"name": "c"}, if_updated_at=first.update_time)
    current = store.get("doc")
    assert current is not None and current.data["name"] == "b"

    # A replace drops the fields the new document no longer has.
    store.replace("doc", {"name": "d", "status": "active"}, if_updated_at=current.update_time)
    replaced = store.get("doc")
    assert replaced is not None and dict(replaced.data) == {"name": "d", "status": "active"}

    with pytest.raises(StoreConflict):
        store.update("missing", {"name": "x"}, if_updated_at=None)
    assert store.delete("doc") is True
    assert store.delete("doc") is False
    assert store.get("doc") is None
    assert store.active_ending_by(datetime.now(UTC), 10) == []
