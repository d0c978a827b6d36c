"""Publishing a batch of messages to one topic and waiting until Pub/Sub has every one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any

from shared.dal.records import OutboundMessage
from shared.errors import DependencyTimeoutError, DependencyUnavailableError

if TYPE_CHECKING:
    import google.cloud.pubsub_v1 as pubsub_v1

__all__ = ["PubSubPublisher"]


class PubSubPublisher:
    """Publishes to ``topic_path`` through a (batching) publisher client built on first use."""

    def __init__(
        self,
        client_factory: Callable[[], pubsub_v1.PublisherClient],
        topic_path: str,
        *,
        timeout: float,
    ) -> None:
        self._client_factory = client_factory
        self._topic_path = topic_path
        self._timeout = timeout

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
