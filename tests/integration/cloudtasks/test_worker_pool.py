"""The dispatch worker pool grows only as concurrency needs and never loses an item."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from emulators.cloudtasks.core import _WorkerPool

pytestmark = pytest.mark.integration


def test_blocked_workers_grow_the_pool_to_its_cap_and_queued_items_still_run(
    poll: Callable[..., Any],
) -> None:
    release = threading.Event()
    done: list[int] = []
    lock = threading.Lock()

    def perform(item: int) -> None:
        release.wait(10)
        with lock:
            done.append(item)

    pool: _WorkerPool[int] = _WorkerPool(4, perform)
    for item in range(10):
        pool.submit(item)
    assert pool.size == 4
    release.set()
    poll(lambda: len(done) == 10)
    assert sorted(done) == list(range(10))
    # Workers that came back are reused: a second wave needs no new thread.
    for item in range(10, 20):
        pool.submit(item)
    poll(lambda: len(done) == 20)
    assert pool.size == 4
    pool.stop()


def test_sequential_fast_items_need_one_worker(poll: Callable[..., Any]) -> None:
    finished = threading.Semaphore(0)

    def perform(item: int) -> None:
        finished.release()

    pool: _WorkerPool[int] = _WorkerPool(50, perform)
    for item in range(200):
        pool.submit(item)
        assert finished.acquire(timeout=5)
        # Once the worker is back waiting, the next item must go to it, not to a new thread.
        poll(lambda: pool._waiting == 1)
    assert pool.size == 1
    pool.stop()


def test_concurrent_submitters_lose_nothing(poll: Callable[..., Any]) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def perform(item: int) -> None:
        with lock:
            seen.append(item)

    pool: _WorkerPool[int] = _WorkerPool(8, perform)

    def submit_range(start: int) -> None:
        for item in range(start, start + 500):
            pool.submit(item)

    threads = [threading.Thread(target=submit_range, args=(k * 500,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    poll(lambda: len(seen) == 4000)
    assert sorted(seen) == list(range(4000))
    assert pool.size <= 8
    pool.stop()
