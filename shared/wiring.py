"""The composition root: the functions' use cases on their real dependencies.

The layers import downwards only: ``functions/<name>/main.py`` → this module → the use cases
(:mod:`shared.usecases`) and the data-access adapters (:mod:`shared.dal`); the use cases import
the adapters' plain values (:mod:`shared.dal.records`), never the adapters' factories, and
:mod:`shared.dal` imports no use case. (Before, the use cases fetched their default
dependencies from :mod:`shared.dal`, which imported the use cases' dependency classes: a
circle.)

Each ``*_dependencies`` is built on the first request of a process and cached; clients are
created on first use, so importing this module makes no network call and reads no environment.
"""

from __future__ import annotations

import functools
from typing import Any

from shared.dal import DUE_TOPIC, completion_publisher, ledger, make_store, make_task_gateway
from shared.envelope import PushMessage
from shared.usecases.fanout import FanoutDependencies, FanoutResult
from shared.usecases.fanout import fanout as _fanout
from shared.usecases.plan_deliveries import PlanDependencies
from shared.usecases.results import ResultsDependencies
from shared.usecases.results import record_result as _record_result
from shared.usecases.select_digests import DigestDependencies
from shared.usecases.select_due import SelectDependencies, SelectResult, select_due

__all__ = [
    "digest_dependencies",
    "fanout",
    "fanout_dependencies",
    "record_result",
    "results_dependencies",
    "select",
    "select_dependencies",
]


@functools.cache
def select_dependencies() -> SelectDependencies:
    """The real dependencies of select (clients are still created only on first use)."""
    from shared import clients
    from shared.config import get_settings
    from shared.dal.pubsub_publisher import PubSubPublisher

    settings = get_settings()
    return SelectDependencies(
        settings=settings,
        store=make_store(settings),
        publisher=PubSubPublisher(
            clients.publisher,
            settings.topic_path(DUE_TOPIC),
            timeout=settings.publish_timeout_seconds,
            direct=True,
        ),
        digests=digest_dependencies(),
    )


@functools.cache
def digest_dependencies() -> DigestDependencies:
    """Scheduled digests on select's tick: the ``delivery_schedules`` store, and the email
    planner (Cloud Tasks, email settings) built only when a digest is first due.

    No ledger: select plans digests without a claim (``store=None``, see
    :func:`shared.usecases.plan_deliveries.plan_delivery`). select may run one instance per
    dispatcher shard (32 in production), which the database's connection budget has no room
    for; the deliver function records each email's row on its first attempt.
    """
    from shared.config import get_settings
    from shared.dal import make_digest_schedules

    return DigestDependencies(schedules=make_digest_schedules(get_settings()), plan=_digest_planner)


@functools.cache
def _digest_planner() -> PlanDependencies:
    # functools.cache keeps no exception: an invalid [email] section is reported on every tick
    # that has a digest due (shared.usecases.select_due), and picked up once fixed.
    from shared.config import get_settings
    from shared.email_settings import load_email_settings

    settings = get_settings()
    return PlanDependencies(
        store=None,
        tasks=make_task_gateway(settings),
        subscriptions=make_store(settings),
        settings=load_email_settings(),
        project=settings.project,
        location=settings.tasks_location,
    )


@functools.cache
def fanout_dependencies() -> FanoutDependencies:
    """The real dependencies of fanout (clients are still created only on first use)."""
    from shared.config import get_settings
    from shared.dal.ledger_gateway import LedgerGateway

    settings = get_settings()
    return FanoutDependencies(
        settings=settings,
        store=make_store(settings),
        tasks=make_task_gateway(settings),
        ledger=LedgerGateway(ledger),
    )


@functools.cache
def results_dependencies() -> ResultsDependencies:
    """The real dependencies of the results path (clients still created only on first use)."""
    from shared.config import get_settings
    from shared.dal.ledger_gateway import LedgerGateway

    settings = get_settings()
    return ResultsDependencies(
        settings=settings,
        ledger=LedgerGateway(ledger),
        completions=completion_publisher(settings),
    )


def select(payload: dict[str, Any], message: PushMessage) -> SelectResult:
    """The ``select`` function's use case: :func:`~shared.usecases.select_due.select_due`."""
    return select_due(payload, message, deps=select_dependencies())


def fanout(payload: dict[str, Any], message: PushMessage) -> FanoutResult:
    """The ``fanout`` function's use case: :func:`~shared.usecases.fanout.fanout`."""
    return _fanout(payload, message, deps=fanout_dependencies())


def record_result(payload: dict[str, Any], message: PushMessage) -> object:
    """The ``results`` function's use case: :func:`~shared.usecases.results.record_result`."""
    return _record_result(payload, message, deps=results_dependencies())
