"""PubSubPublisher(direct=True): Publish RPCs on the client's channel, scripted here.

Batches within Pub/Sub's request limits, ids in order, transient errors retried, anything else a
retryable dispatcher error; a client without a gRPC channel still goes through its publish().
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import grpc
import pytest
from google.pubsub_v1.types import PublishResponse

from shared.dal.pubsub_publisher import PubSubPublisher, _batches
from shared.dal.records import OutboundMessage
from shared.errors import DependencyUnavailableError

TOPIC = "projects/p/topics/dispatcher-due"


class _RpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"scripted {self._code.name}"

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> Any:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Any) -> bool:
        return False


class ScriptedChannel(grpc.Channel):  # type: ignore[misc]
    """Answers Publish with sequential ids; ``errors`` are raised first, one per call."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.metadata: list[Any] = []
        self.errors: list[grpc.StatusCode] = []
        self.confirmed = 0

    def unary_unary(
        self, method: str, request_serializer: Any = None, *_: Any, **__: Any
    ) -> Callable[..., Any]:
        assert method == "/google.pubsub.v1.Publisher/Publish"

        def call(request: Any, timeout: float, metadata: Any) -> Any:
            request_serializer(request)  # what would go on the wire
            self.requests.append(request)
            self.metadata.append(metadata)
            if self.errors:
                raise _RpcError(self.errors.pop(0))
            ids = [str(self.confirmed + i) for i in range(len(request.messages))]
            self.confirmed += len(ids)
            return PublishResponse.pb()(message_ids=ids)

        return call

    def subscribe(self, *a: Any, **k: Any) -> None: ...
    def unsubscribe(self, *a: Any, **k: Any) -> None: ...
    def unary_stream(self, *a: Any, **k: Any) -> Any: ...
    def stream_unary(self, *a: Any, **k: Any) -> Any: ...
    def stream_stream(self, *a: Any, **k: Any) -> Any: ...
    def close(self) -> None: ...
    def __enter__(self) -> Any:
        return self

    def __exit__(self, *a: Any) -> None: ...


class _Transport:
    def __init__(self, channel: ScriptedChannel) -> None:
        self.grpc_channel = channel


class _Client:
    def __init__(self, channel: ScriptedChannel) -> None:
        self.transport = _Transport(channel)


def _messages(n: int, size: int = 10) -> list[OutboundMessage]:
    return [OutboundMessage(data=b"x" * size, attributes={"i": str(i)}) for i in range(n)]


def test_a_page_goes_out_in_request_sized_batches_and_ids_come_back_in_order() -> None:
    channel = ScriptedChannel()
    publisher = PubSubPublisher(lambda: _Client(channel), TOPIC, timeout=5.0, direct=True)
    ids = publisher.publish(_messages(2500))
    assert ids == [str(i) for i in range(2500)]
    assert [len(r.messages) for r in channel.requests] == [1000, 1000, 500]
    first = channel.requests[0]
    assert first.topic == TOPIC and first.messages[7].attributes["i"] == "7"
    assert ("x-goog-request-params", f"topic={TOPIC}") in channel.metadata[0]


def test_batches_also_respect_the_request_byte_limit() -> None:
    sizes = [len(b) for b in _batches(_messages(5, size=4_000_000))]
    assert sizes == [2, 2, 1]


def test_a_transient_error_is_retried_and_a_permanent_one_raises_retryably() -> None:
    channel = ScriptedChannel()
    channel.errors = [grpc.StatusCode.UNAVAILABLE]
    publisher = PubSubPublisher(lambda: _Client(channel), TOPIC, timeout=5.0, direct=True)
    assert publisher.publish(_messages(3)) == ["0", "1", "2"]
    assert len(channel.requests) == 2
    channel.errors = [grpc.StatusCode.PERMISSION_DENIED]
    with pytest.raises(DependencyUnavailableError):
        publisher.publish(_messages(1))


def test_a_client_without_a_channel_publishes_through_its_own_publish() -> None:
    published: list[bytes] = []

    class Plain:
        def publish(self, topic: str, data: bytes, **attrs: str) -> Future[str]:
            published.append(data)
            future: Future[str] = Future()
            future.set_result(str(len(published)))
            return future

    publisher = PubSubPublisher(Plain, TOPIC, timeout=5.0, direct=True)
    assert publisher.publish(_messages(2)) == ["1", "2"]
    assert published == [b"x" * 10, b"x" * 10]
