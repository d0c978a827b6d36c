"""Publishing a batch of messages to one topic and waiting until Pub/Sub has every one.

select publishes a page of due messages at a time and waits for all of them: with ``direct``,
the page goes out as Publish RPCs of up to 1,000 messages on the client's gRPC channel with plain
protobuf messages, instead of through the batching publisher (a Future per message, a commit
thread per batch, proto-plus wrapping per message). Profiling select (docs/profile-select.md)
found that machinery at about a tenth of its CPU, for batches select had already formed. Same
RPC, same metadata, same outcome: every message confirmed or a retryable error, never a message
left in flight unobserved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any, Final

from google.api_core import exceptions as gexc

from shared.clients import grpc_channel_of
from shared.dal.records import OutboundMessage
from shared.errors import DependencyTimeoutError, DependencyUnavailableError

if TYPE_CHECKING:
    import google.cloud.pubsub_v1 as pubsub_v1

__all__ = ["PubSubPublisher"]

# Pub/Sub's limits per Publish request: 1,000 messages, 10 MB (a margin kept for the envelope).
_MAX_BATCH_MESSAGES: Final = 1000
_MAX_BATCH_BYTES: Final = 9_000_000
# What the batching publisher retries by default (google.pubsub_v1 publisher_client_config).
_TRANSIENT: Final = (
    gexc.Aborted,
    gexc.Cancelled,
    gexc.DeadlineExceeded,
    gexc.InternalServerError,
    gexc.ResourceExhausted,
    gexc.ServiceUnavailable,
    gexc.Unknown,
)
_RETRY_INITIAL: Final = 0.1
_RETRY_MAXIMUM: Final = 2.0


class PubSubPublisher:
    """Publishes to ``topic_path`` through a (batching) publisher client built on first use."""

    def __init__(
        self,
        client_factory: Callable[[], pubsub_v1.PublisherClient],
        topic_path: str,
        *,
        timeout: float,
        direct: bool = False,
    ) -> None:
        self._client_factory = client_factory
        self._topic_path = topic_path
        self._timeout = timeout
        self._direct = direct
        self._stub_lock = threading.Lock()
        self._stub: _PublishStub | None = None
        self._stub_checked = False

    @property
    def topic_path(self) -> str:
        return self._topic_path

    def publish(self, messages: Sequence[OutboundMessage]) -> list[str]:
        """Publish every message and wait on every future; return the message ids in order.

        Raises :class:`~shared.errors.RetryableError` if any publish failed or did not finish
        within the timeout -- after waiting for all of them, so nothing is left in flight
        unobserved. Messages that did go out are harmless duplicates on the retry (fanout's
        dispatch key absorbs them).
        """
        if not messages:
            return []
        stub = self._publish_stub() if self._direct else None
        if stub is not None:
            return self._publish_direct(stub, messages)
        client = self._client_factory()
        pending: list[Any] = [
            client.publish(self._topic_path, m.data, **dict(m.attributes)) for m in messages
        ]
        _, not_done = futures.wait(pending, timeout=self._timeout)
        if not_done:
            raise DependencyTimeoutError(
                "pubsub",
                f"{len(not_done)} of {len(pending)} publishes to {self._topic_path} "
                f"unconfirmed after {self._timeout:.0f}s",
            )
        ids: list[str] = []
        failures: list[BaseException] = []
        for future in pending:
            error = future.exception()
            if error is not None:
                failures.append(error)
            else:
                ids.append(str(future.result()))
        if failures:
            raise DependencyUnavailableError(
                "pubsub",
                f"{len(failures)} of {len(pending)} publishes to {self._topic_path} failed: "
                f"{failures[0]}",
            ) from failures[0]
        return ids

    def _publish_stub(self) -> _PublishStub | None:
        """The plain stub on the client's channel, or ``None`` for a client without one."""
        if not self._stub_checked:
            with self._stub_lock:
                if not self._stub_checked:
                    channel = grpc_channel_of(self._client_factory())
                    if channel is not None:
                        self._stub = _PublishStub(channel, self._topic_path)
                    self._stub_checked = True
        return self._stub

    def _publish_direct(self, stub: _PublishStub, messages: Sequence[OutboundMessage]) -> list[str]:
        ids: list[str] = []
        deadline = time.monotonic() + self._timeout
        for batch in _batches(messages):
            ids.extend(self._publish_batch(stub, batch, deadline))
        return ids

    def _publish_batch(
        self, stub: _PublishStub, batch: Sequence[OutboundMessage], deadline: float
    ) -> list[str]:
        import grpc

        request = stub.request(batch)
        delay = _RETRY_INITIAL
        while True:
            remaining = deadline - time.monotonic()
            try:
                response = stub.call(request, timeout=max(remaining, 0.001), metadata=stub.metadata)
            except grpc.RpcError as exc:
                error = gexc.from_grpc_error(exc)  # type: ignore[no-untyped-call]
                # A retried batch that had gone through is a duplicate; fanout's dispatch key
                # absorbs it, as it does the batching publisher's retries.
                if isinstance(error, _TRANSIENT) and time.monotonic() + delay < deadline:
                    time.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAXIMUM)
                    continue
                if isinstance(error, gexc.DeadlineExceeded):
                    raise DependencyTimeoutError(
                        "pubsub",
                        f"{len(batch)} publishes to {self._topic_path} unconfirmed after "
                        f"{self._timeout:.0f}s",
                    ) from error
                raise DependencyUnavailableError(
                    "pubsub", f"{len(batch)} publishes to {self._topic_path} failed: {error}"
                ) from error
            ids = list(response.message_ids)
            if len(ids) != len(batch):
                raise DependencyUnavailableError(
                    "pubsub",
                    f"{len(ids)} message ids for {len(batch)} publishes to {self._topic_path}",
                )
            return ids


def _batches(messages: Sequence[OutboundMessage]) -> list[Sequence[OutboundMessage]]:
    batches: list[Sequence[OutboundMessage]] = []
    start = size = 0
    for index, message in enumerate(messages):
        weight = len(message.data) + sum(len(k) + len(v) for k, v in message.attributes.items())
        if index > start and (
            index - start >= _MAX_BATCH_MESSAGES or size + weight > _MAX_BATCH_BYTES
        ):
            batches.append(messages[start:index])
            start, size = index, 0
        size += weight
    batches.append(messages[start:])
    return batches


class _PublishStub:
    """``Publish`` to one topic on a gRPC channel with plain protobuf messages."""

    def __init__(self, channel: Any, topic_path: str) -> None:
        from google.api_core.gapic_v1 import routing_header
        from google.api_core.gapic_v1.client_info import DEFAULT_CLIENT_INFO
        from google.pubsub_v1.types import PublishRequest, PublishResponse, PubsubMessage

        self._request_class: Any = PublishRequest.pb()
        self._message_class: Any = PubsubMessage.pb()
        response_class: Any = PublishResponse.pb()
        self._topic_path = topic_path
        self.call = channel.unary_unary(
            "/google.pubsub.v1.Publisher/Publish",
            request_serializer=self._request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        self.metadata: tuple[tuple[str, str], ...] = (
            DEFAULT_CLIENT_INFO.to_grpc_metadata(),  # type: ignore[no-untyped-call]
            routing_header.to_grpc_metadata((("topic", topic_path),)),  # type: ignore[no-untyped-call]
        )

    def request(self, batch: Sequence[OutboundMessage]) -> Any:
        message_class = self._message_class
        return self._request_class(
            topic=self._topic_path,
            messages=[message_class(data=m.data, attributes=m.attributes) for m in batch],
        )
