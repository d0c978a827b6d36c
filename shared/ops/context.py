"""What the ops CLI commands share: one project, lazily created clients, friendly errors."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from shared.config import Settings
    from shared.dal.digest_schedules import FirestoreDigestSchedules
    from shared.dal.firestore_store import FirestoreSubscriptionStore
    from shared.ledger.repository import Ledger

P = ParamSpec("P")
R = TypeVar("R")


class OpsContext:
    """Clients for one project (``--project`` wins over the configuration), built on first use.

    The emulator environment (``PUBSUB_EMULATOR_HOST``, ``FIRESTORE_EMULATOR_HOST``) is honoured
    by the Google libraries themselves.
    """

    def __init__(self, project: str | None = None, settings: Settings | None = None) -> None:
        from shared.config import get_settings

        self.settings = settings or get_settings()
        self.project = project or self.settings.project
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = build()
        return self._cache[name]

    def firestore(self) -> Any:
        """A Firestore client for the project."""
        from google.cloud import firestore

        return self._get("firestore", lambda: firestore.Client(project=self.project))

    def store(self) -> FirestoreSubscriptionStore:
        """The subscriptions collection."""
        from shared.dal import make_store

        store: FirestoreSubscriptionStore = self._get(
            "store", lambda: make_store(self.settings, self.firestore)
        )
        return store

    def digest_schedules(self) -> FirestoreDigestSchedules:
        """The ``delivery_schedules`` collection (scheduled digests)."""
        from shared.dal import make_digest_schedules

        schedules: FirestoreDigestSchedules = self._get(
            "digest_schedules", lambda: make_digest_schedules(self.settings, self.firestore)
        )
        return schedules

    def publisher(self) -> Any:
        """A Pub/Sub publisher client."""
        import google.cloud.pubsub_v1 as pubsub_v1

        return self._get("publisher", pubsub_v1.PublisherClient)

    def subscriber(self) -> Any:
        """A Pub/Sub subscriber client (synchronous pull)."""
        import google.cloud.pubsub_v1 as pubsub_v1

        return self._get("subscriber", pubsub_v1.SubscriberClient)

    def publish(self, topic: str, data: bytes, attributes: dict[str, str] | None = None) -> str:
        """Publish to a short topic name and wait until Pub/Sub accepted it; the message id."""
        from shared.deadletter import PubSubDeadLetterPublisher

        sender = PubSubDeadLetterPublisher(
            project=self.project,
            timeout_seconds=self.settings.publish_timeout_seconds,
            client=self.publisher(),
        )
        return sender.publish(topic, data, attributes or {})

    def ledger(self) -> Ledger:
        """The ledger on ``DATABASE_URL``."""
        from shared.config import ConfigError
        from shared.ledger.repository import Ledger, open_pool

        def build() -> Ledger:
            if not self.settings.database_url:
                raise ConfigError(
                    "DATABASE_URL is not set: the ledger database is unknown "
                    "(locally: source .dispatcher/stack.env)"
                )
            return Ledger(
                open_pool(
                    self.settings.database_url,
                    min_size=1,
                    max_size=2,
                    timeout=self.settings.dependency_timeout_seconds,
                )
            )

        ledger: Ledger = self._get("ledger", build)
        return ledger

    def close(self) -> None:
        """Close what was opened (the ledger pool, the subscriber's channel)."""
        ledger = self._cache.pop("ledger", None)
        if ledger is not None:
            ledger.pool.close()
        subscriber = self._cache.pop("subscriber", None)
        if subscriber is not None:
            subscriber.close()
        self._cache.clear()


def utcnow() -> datetime:
    """The current instant, UTC."""
    return datetime.now(UTC)


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn errors a user can fix into :class:`~shared.cli.common.CliError` (one line, exit 1)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import psycopg
        from google.api_core import exceptions as gexc

        from shared.cli.common import CliError, known_error
        from shared.dal.records import StoreConflict
        from shared.errors import (
            DependencyTimeoutError,
            DependencyUnavailableError,
            SchemaValidationError,
        )
        from shared.ledger.repository import LedgerError
        from shared.ops.deadletters import DeadLetterError
        from shared.ops.subscriptions import SubscriptionInputError, SubscriptionNotFound
        from shared.subscription import InvalidSubscription

        try:
            return func(*args, **kwargs)
        except (
            SubscriptionInputError,
            SubscriptionNotFound,
            DeadLetterError,
            StoreConflict,
            LedgerError,
            InvalidSubscription,
        ) as exc:
            raise CliError(str(exc).strip("'\"")) from exc
        except SchemaValidationError as exc:
            raise CliError(exc.message) from exc
        except psycopg.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CliError(f"cannot reach the ledger database: {first}") from exc
        except DependencyTimeoutError as exc:
            # The store retries briefly itself, then reports the timeout this way.
            raise CliError(
                f"a Google API did not answer in time ({exc.message}); is the emulator or "
                "the network up, and the project right?"
            ) from exc
        except DependencyUnavailableError as exc:
            raise CliError(exc.message) from exc
        except gexc.RetryError as exc:
            raise CliError(
                f"a Google API did not answer in time ({exc.cause or exc}); is the emulator or "
                "the network up, and the project right?"
            ) from exc
        except Exception as exc:
            message = known_error(exc)
            if message is None:
                raise
            raise CliError(message) from exc

    return wrapper
