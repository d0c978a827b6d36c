"""apply_queues: every shard queue of every kind, each with the kind's limits split evenly."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from google.api_core import exceptions as gexc

from shared.config import load_settings
from shared.tasks_admin import apply_queues


class FakeAdmin:
    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.created: dict[str, dict[str, Any]] = {}
        self.updated: dict[str, dict[str, Any]] = {}

    def create_queue(self, request: dict[str, Any]) -> None:
        queue = request["queue"]
        if queue["name"] in self.existing:
            raise gexc.AlreadyExists("exists")  # type: ignore[no-untyped-call]
        self.created[queue["name"]] = queue

    def update_queue(self, request: dict[str, Any]) -> None:
        self.updated[request["queue"]["name"]] = request["queue"]


def test_every_shard_is_created_with_its_share_of_the_kinds_limits() -> None:
    settings = load_settings(environ={})
    rss = replace(settings.queues["rss"], shards=2)
    settings = replace(settings, queues={**settings.queues, "rss": rss})
    admin = FakeAdmin(existing={settings.queue_path("rss")})
    changes = apply_queues(settings, admin)  # type: ignore[arg-type]
    names = {c.name for c in changes}
    assert names == {p for k in settings.queues for p in settings.queue_paths(k)}
    # Shard 0 is the existing queue: updated in place, never re-created.
    first, second = settings.queue_paths("rss")
    assert first in admin.updated and second in admin.created
    for queue in (admin.updated[first], admin.created[second]):
        assert queue["rate_limits"] == {
            "max_dispatches_per_second": rss.max_dispatches_per_second / 2,
            "max_concurrent_dispatches": rss.max_concurrent_dispatches // 2,
        }
    social = admin.created[settings.queue_path("social")]
    assert social["rate_limits"]["max_dispatches_per_second"] == (
        settings.queues["social"].max_dispatches_per_second
    )
