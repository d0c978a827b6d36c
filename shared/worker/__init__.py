"""The worker kit: what a collector service imports to execute dispatcher tasks safely.

See ``docs/worker-kit.md``. In short::

    import functions_framework
    from shared.worker import CollectorTask, CollectResult, task_handler

    @functions_framework.http
    @task_handler()
    def collect(task: CollectorTask) -> CollectResult:
        ...

Importing this package reads no environment and creates no client.
"""

from __future__ import annotations

from shared.worker.checks import (
    LedgerSucceededCheck,
    SubscriptionReader,
    SucceededCheck,
    subscription_skip_reason,
)
from shared.worker.config import RESULTS_TOPIC, WorkerConfig, WorkerEnv, load_worker_config
from shared.worker.headers import TaskHeaders
from shared.worker.kit import (
    CollectFunction,
    TaskWorker,
    TokenCheck,
    WorkerDependencies,
    WorkerReply,
    request_audience,
    task_handler,
)
from shared.worker.reporter import (
    Outcome,
    OutcomeReport,
    PubSubResultPublisher,
    ResultPublisher,
    build_result,
)
from shared.worker.task import (
    CollectorTask,
    CollectResult,
    PermanentCollectError,
    RetryableCollectError,
    TaskSource,
)

__all__ = [
    "RESULTS_TOPIC",
    "CollectFunction",
    "CollectResult",
    "CollectorTask",
    "LedgerSucceededCheck",
    "Outcome",
    "OutcomeReport",
    "PermanentCollectError",
    "PubSubResultPublisher",
    "ResultPublisher",
    "RetryableCollectError",
    "SubscriptionReader",
    "SucceededCheck",
    "TaskHeaders",
    "TaskSource",
    "TaskWorker",
    "TokenCheck",
    "WorkerConfig",
    "WorkerDependencies",
    "WorkerEnv",
    "WorkerReply",
    "build_result",
    "load_worker_config",
    "request_audience",
    "subscription_skip_reason",
    "task_handler",
]
