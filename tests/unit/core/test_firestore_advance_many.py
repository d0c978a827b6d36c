"""FirestoreSubscriptionStore.advance_many against a scripted BatchWrite RPC: chunking, each
write's precondition, and how each write's status becomes an outcome or an error."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore
from google.cloud.firestore_v1.types.firestore import BatchWriteResponse
from google.cloud.firestore_v1.types.write import Write
from google.rpc import code_pb2, status_pb2

from shared.dal.firestore_store import FirestoreSubscriptionStore
from shared.dal.records import Advance, StoredSubscription
from shared.errors import DependencyTimeoutError, DependencyUnavailableError

# The google packages are untyped here; called through Any.
_ANONYMOUS: Any = AnonymousCredentials
_ERRORS: Any = gexc
READ_AT = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
NEXT = datetime(2026, 1, 5, 9, 5, tzinfo=UTC)
NOW = datetime(2026, 1, 5, 9, 0, 1, tzinfo=UTC)


class ScriptedApi:
    """Answers batch_write with the scripted code of each document (OK when unscripted).

    ``codes[id]`` is consumed one code per call that carries the document, so a transient code
    followed by OK models a write that goes through when sent again.
    """

    def __init__(self) -> None:
        self.codes: dict[str, list[int]] = {}
        self.rpc_error: Exception | None = None
        self.calls: list[list[Any]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def batch_write(self, request: dict[str, Any], **kwargs: Any) -> BatchWriteResponse:
        # The store sends raw protobufs; the proto-plus view reads timestamps as datetimes.
        writes = [w if isinstance(w, Write) else Write.wrap(w) for w in request["writes"]]
        with self.lock:
            self.calls.append(writes)
            self.kwargs.append(kwargs)
            if self.rpc_error is not None:
                raise self.rpc_error
            codes = [self._next_code(_doc_id(w)) for w in writes]
        return BatchWriteResponse(
            write_results=[{} for _ in writes],
            status=[status_pb2.Status(code=c, message=f"code {c}") for c in codes],
        )

    def _next_code(self, doc_id: str) -> int:
        script = self.codes.get(doc_id)
        return script.pop(0) if script else code_pb2.OK


def _doc_id(write: Any) -> str:
    return str(write.update.name).rsplit("/", 1)[1]


class ScriptedClient(firestore.Client):
    api: ScriptedApi

    @property
    def _firestore_api(self) -> ScriptedApi:
        return self.api


@pytest.fixture
def api() -> ScriptedApi:
    return ScriptedApi()


@pytest.fixture
def store(api: ScriptedApi) -> Iterator[FirestoreSubscriptionStore]:
    client = ScriptedClient(project="demo", credentials=_ANONYMOUS())
    client.api = api
    yield FirestoreSubscriptionStore(lambda: client, timeout=1.0, retry_budget=1.0)


def item(doc_id: str, *, expired: bool = False, seconds: int = 0) -> Advance:
    doc = StoredSubscription(doc_id, {}, READ_AT + timedelta(seconds=seconds))
    return Advance(doc, None if expired else NEXT, expired)


def test_each_write_status_is_its_own_outcome(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    api.codes = {"b": [code_pb2.FAILED_PRECONDITION], "d": [code_pb2.NOT_FOUND]}
    outcomes = store.advance_many([item(i) for i in "abcde"], now=NOW)
    assert outcomes == [True, False, True, False, True]
    assert len(api.calls) == 1


def test_every_write_carries_its_own_precondition_and_fields(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    store.advance_many([item("a", seconds=1), item("b", expired=True, seconds=2)], now=NOW)
    [writes] = api.calls
    a, b = writes
    assert a.current_document.update_time == READ_AT + timedelta(seconds=1)
    assert b.current_document.update_time == READ_AT + timedelta(seconds=2)
    assert set(a.update_mask.field_paths) == {"next_run_at", "updated_at"}
    assert set(b.update_mask.field_paths) == {"status", "next_run_at", "updated_at"}
    assert b.update.fields["status"].string_value == "expired"
    assert b.update.fields["next_run_at"].null_value == 0
    assert "null_value" in b.update.fields["next_run_at"]


def test_an_unknown_update_time_still_requires_the_document_to_exist(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    doc = StoredSubscription("a", {}, None)
    assert store.advance(doc, NEXT, expired=False, now=NOW) is True
    [[write]] = api.calls
    assert write.current_document.exists is True


def test_writes_go_out_in_chunks_of_500_and_come_back_in_order(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    ids = [f"s{i:04d}" for i in range(1200)]
    conflicting = set(ids[::97])
    api.codes = {i: [code_pb2.FAILED_PRECONDITION] for i in conflicting}
    outcomes = store.advance_many([item(i) for i in ids], now=NOW)
    assert outcomes == [i not in conflicting for i in ids]
    assert sorted(len(call) for call in api.calls) == [200, 500, 500]
    assert sorted(_doc_id(w) for call in api.calls for w in call) == ids


def test_a_write_answered_with_a_transient_code_is_sent_again_alone(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    api.codes = {
        "b": [code_pb2.ABORTED],
        "c": [code_pb2.UNAVAILABLE, code_pb2.FAILED_PRECONDITION],
        "d": [code_pb2.RESOURCE_EXHAUSTED],
    }
    assert store.advance_many([item(i) for i in "abcd"], now=NOW) == [True, True, False, True]
    assert [sorted(_doc_id(w) for w in call) for call in api.calls] == [
        ["a", "b", "c", "d"],
        ["b", "c", "d"],
    ]
    assert api.calls[1][0].current_document.update_time == READ_AT


def test_a_transient_code_past_the_retry_budget_raises_retryably(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    api.codes = {"b": [code_pb2.DEADLINE_EXCEEDED] * 100}
    with pytest.raises(DependencyTimeoutError, match="advance b"):
        store.advance_many([item(i) for i in "abc"], now=NOW)
    assert 1 < len(api.calls) < 100


@pytest.mark.parametrize("code", [code_pb2.PERMISSION_DENIED, code_pb2.INVALID_ARGUMENT])
def test_any_other_write_code_raises_retryably_after_every_chunk_finished(
    store: FirestoreSubscriptionStore, api: ScriptedApi, code: int
) -> None:
    ids = [f"s{i:04d}" for i in range(1200)]
    api.codes = {ids[3]: [code]}
    with pytest.raises(DependencyUnavailableError, match=f"advance {ids[3]}"):
        store.advance_many([item(i) for i in ids], now=NOW)
    assert len(api.calls) == 3


def test_a_failed_rpc_goes_through_the_usual_translation_and_retry_budget(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    api.rpc_error = _ERRORS.PermissionDenied("no")
    with pytest.raises(DependencyUnavailableError, match="403 no"):
        store.advance_many([item("a")], now=NOW)
    api.rpc_error = _ERRORS.DeadlineExceeded("slow")
    with pytest.raises(DependencyTimeoutError, match="504 slow"):
        store.advance_many([item("a")], now=NOW)
    # The RPC's own retries (done by the generated client, not this fake) get the budget.
    retry, timeout = api.kwargs[-1]["retry"], api.kwargs[-1]["timeout"]
    assert timeout == 1.0 and 0 < retry.timeout <= 1.0
    assert retry._predicate(_ERRORS.ServiceUnavailable("x"))
    assert not retry._predicate(_ERRORS.FailedPrecondition("x"))


def test_one_document_twice_is_refused_before_any_rpc(
    store: FirestoreSubscriptionStore, api: ScriptedApi
) -> None:
    with pytest.raises(ValueError, match="more than once"):
        store.advance_many([item("a"), item("a", seconds=1)], now=NOW)
    assert store.advance_many([], now=NOW) == []
    assert api.calls == []
