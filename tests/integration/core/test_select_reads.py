"""How many documents select reads for a tick, counted at the query stream on the emulator.

The burst benchmark reported 12,483 reads for 10,000 due subscriptions. These tests pin down
where reads come from: paging reads each due document once, and only a second pass of the same
tick running while the first is still in flight (Pub/Sub redelivers a tick whose processing
outlives its ack deadline) reads documents again -- exactly those the first had not advanced
yet, each then published twice and advanced once (the other write is a conflict).
"""

from __future__ import annotations

import dataclasses
import threading
from datetime import timedelta

from shared.envelope import PushMessage
from shared.usecases.select_due import SelectDependencies, SelectResult, select_due
from tests.integration.core.harness import Core
from tests.support.core import subscription_doc, utc

TICK = utc("2026-02-02T10:00")
DUE = 120
PAGE = 4


def _seed_due(core: Core, prefix: str) -> None:
    n = core.settings.shard_count
    docs = {
        f"{prefix}{i:04d}": subscription_doc(
            f"{prefix}{i:04d}", schedule={"every": 300}, start=TICK, shard_count=n
        )
        for i in range(DUE)
    }
    # Not due at the tick: must never be read.
    docs.update(
        {
            f"{prefix}later-{i}": subscription_doc(
                f"{prefix}later-{i}",
                schedule={"every": 300},
                start=TICK + timedelta(minutes=5),
                shard_count=n,
            )
            for i in range(30)
        }
    )
    core.seed(docs)


def _small_pages(core: Core) -> SelectDependencies:
    settings = dataclasses.replace(core.settings, firestore_page_size=PAGE)
    return dataclasses.replace(core.select_deps, settings=settings)


def _tick(deps: SelectDependencies) -> SelectResult:
    message = PushMessage(data=b"{}", attributes={}, message_id="tick-reads")
    return select_due({"time": "2026-02-02T10:00:00Z"}, message, deps=deps)


def test_paging_reads_each_due_document_once(core: Core) -> None:
    _seed_due(core, "pg-")
    core.store.reset()
    result = _tick(_small_pages(core))
    assert result.published == DUE and result.advanced == DUE
    # Many pages per shard (120 due over 16 shards, 4 a page): still one read per due document.
    assert core.store.query_reads == DUE == result.read
    assert core.store.queries > core.settings.shard_count
    core.store.reset()
    again = _tick(_small_pages(core))  # the same tick redelivered after it finished
    assert again.read == again.published == 0
    assert core.store.query_reads == 0
    assert len(core.pull_due(DUE)) == DUE


def test_an_overlapping_redelivery_reads_only_what_the_first_pass_had_not_advanced(
    core: Core,
) -> None:
    _seed_due(core, "ov-")
    deps = _small_pages(core)
    core.store.reset()
    results: list[SelectResult] = []
    lock = threading.Lock()
    start = threading.Barrier(2)

    def one() -> None:
        start.wait()
        result = _tick(deps)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first, second = results
    read = first.read + second.read
    assert core.store.query_reads == read
    # Every document read twice was published twice and advanced once: the extra reads, the
    # duplicate publishes and the conflicts are the same documents.
    assert first.advanced + second.advanced == DUE
    assert read - DUE == first.conflicts + second.conflicts
    assert first.published + second.published == read
    assert DUE <= read <= 2 * DUE
