"""select's batched advance on the Firestore emulator: one BatchWrite per chunk, and each write
still conditioned on its own document's update time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from shared.dal.firestore_store import BATCH_WRITE_LIMIT
from shared.dal.records import Advance
from tests.integration.core.harness import Core
from tests.support.core import subscription_doc, utc

pytestmark = pytest.mark.integration

START = utc("2026-01-05T09:00")
NEXT = START + timedelta(minutes=5)
NOW = START + timedelta(seconds=3)
OTHER_WRITER = utc("2031-01-01T00:00")


def test_a_batch_of_advances_fails_exactly_the_documents_written_since_the_read(
    core: Core, firestore_client: Any
) -> None:
    count = 1200
    assert count > 2 * BATCH_WRITE_LIMIT, "the batch must span three chunks"
    ids = [f"adv-{i:04d}" for i in range(count)]
    core.seed(
        {
            sid: subscription_doc(
                sid, schedule={"every": 300}, start=START, shard_count=core.settings.shard_count
            )
            for sid in ids
        }
    )
    read = core.store.page(count + 1)
    assert [doc.id for doc in read] == ids

    # Another writer (an overlapping tick, an operator) touches some documents after our read,
    # in every chunk, and deletes one.
    collection = firestore_client.collection("subscriptions")
    edited = {ids[i] for i in (0, 1, 499, 500, 777, 1000, 1199)} | set(ids[3::97])
    for sid in edited:
        collection.document(sid).update({"next_run_at": OTHER_WRITER})
    deleted = ids[250]
    collection.document(deleted).delete()
    expiring = set(ids[5::200]) - edited

    outcomes = core.store.advance_many(
        [Advance(doc, NEXT, doc.id in expiring) for doc in read], now=NOW
    )

    lost = edited | {deleted}
    assert outcomes == [sid not in lost for sid in ids]
    after = {doc.id: doc.data for doc in core.store.page(count + 1)}
    assert deleted not in after, "a conditional advance must not recreate a deleted document"
    for sid in edited:
        assert after[sid]["next_run_at"] == OTHER_WRITER, f"{sid}: the other writer's value stands"
        assert after[sid]["updated_at"] != NOW
    for sid in set(ids) - lost:
        if sid in expiring:
            assert (after[sid]["status"], after[sid]["next_run_at"]) == ("expired", None), sid
        else:
            assert (after[sid]["status"], after[sid]["next_run_at"]) == ("active", NEXT), sid
        assert after[sid]["updated_at"] == NOW, sid

    # The same advances again: every document changed since that read (ours or theirs).
    again = core.store.advance_many(
        [Advance(doc, NEXT, doc.id in expiring) for doc in read], now=NOW
    )
    assert again == [False] * count
