"""Every composite-index query the code runs has its index in terraform/firestore.tf.

The queries are captured by running the real store against a recording collection, so a query
change without an index change (or the reverse) fails here, not in production's first run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from shared.dal.firestore_store import FirestoreSubscriptionStore
from tests.unit.deploy.test_terraform import resource

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class RecordingQuery:
    def __init__(self) -> None:
        self.filters: list[tuple[str, str]] = []
        self.order: list[str] = []

    def where(self, *, filter: Any) -> RecordingQuery:
        self.filters.append((filter.field_path, filter.op_string))
        return self

    def order_by(self, field: str, **_: Any) -> RecordingQuery:
        self.order.append(field)
        return self

    def limit(self, _: int) -> RecordingQuery:
        return self

    def stream(self, **_: Any) -> list[Any]:
        return []


class RecordingClient:
    def __init__(self) -> None:
        self.queries: list[RecordingQuery] = []

    def collection(self, name: str) -> RecordingQuery:
        assert name == "subscriptions"
        query = RecordingQuery()
        self.queries.append(query)
        return query


def _index_fields(name: str) -> list[str]:
    index = resource(f"google_firestore_index.{name}")
    assert index.body["collection"] == "subscriptions"
    return [f["field_path"] for f in index.body["fields"]]


def _query_fields(query: RecordingQuery) -> list[str]:
    # Firestore's rule: equality fields first, then the one range field (also the order).
    equalities = [field for field, op in query.filters if op == "=="]
    ranges = [field for field, op in query.filters if op != "=="]
    assert len(ranges) == 1
    assert query.order in ([], ranges)
    return equalities + ranges


@pytest.mark.parametrize(
    ("index", "run"),
    [
        ("due_query", lambda store: store.due_page(3, NOW, 100)),
        ("expire_query", lambda store: store.active_ending_by(NOW, 100)),
    ],
)
def test_each_query_has_its_composite_index(index: str, run: Any) -> None:
    client = RecordingClient()
    # The store only calls collection() and the query builders, which the recorder provides.
    run(FirestoreSubscriptionStore(cast(Any, lambda: client)))
    [query] = client.queries
    assert _query_fields(query) == _index_fields(index)


class RecordingSchedulesClient:
    """The same recorder for ``delivery_schedules``."""

    def __init__(self) -> None:
        self.queries: list[RecordingQuery] = []

    def collection(self, name: str) -> RecordingQuery:
        assert name == "delivery_schedules"
        query = RecordingQuery()
        self.queries.append(query)
        return query


@pytest.mark.parametrize(
    "run",
    [
        lambda schedules: schedules.due(NOW, 500),
        lambda schedules: schedules.for_subscription("acme"),
    ],
)
def test_digest_schedule_queries_need_no_composite_index(run: Any) -> None:
    """Firestore serves one range filter ordered by the same field, or one equality, from its
    automatic single-field indexes: terraform/ declares nothing for ``delivery_schedules``, and
    a query that starts needing a composite index fails here."""
    from shared.dal.digest_schedules import FirestoreDigestSchedules
    from tests.unit.deploy.hcl import resources

    client = RecordingSchedulesClient()
    run(FirestoreDigestSchedules(cast(Any, lambda: client)))
    [query] = client.queries
    fields = {field for field, _ in query.filters} | set(query.order)
    assert len(fields) == 1, f"more than one field: needs a composite index ({fields})"
    declared = [
        address
        for address, r in resources().items()
        if address.startswith("google_firestore_index.")
        and r.body.get("collection") == "delivery_schedules"
    ]
    assert declared == []
