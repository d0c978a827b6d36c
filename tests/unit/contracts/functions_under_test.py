"""Test-only functions, shaped like functions/<name>/main.py, one per pushed topic.

The ``ce_*`` targets use ``@functions_framework.cloud_event`` (the CloudEvent functions-framework
makes of the raw push request); the ``http_*`` targets use ``@functions_framework.http`` with
:func:`shared.handler.handle_push_request`. The use cases record their input (recorder.py).
"""

from __future__ import annotations

from typing import Any

import flask
import functions_framework

from shared.handler import handle_push_request, run_pubsub_entrypoint
from tests.unit.contracts.recorder import USE_CASES


@functions_framework.cloud_event
def ce_select(event: Any) -> None:
    run_pubsub_entrypoint(
        event,
        topic="dispatcher-ticks",
        function="select",
        use_case=USE_CASES.for_topic("dispatcher-ticks"),
    )


@functions_framework.cloud_event
def ce_fanout(event: Any) -> None:
    run_pubsub_entrypoint(
        event,
        topic="dispatcher-due",
        function="fanout",
        use_case=USE_CASES.for_topic("dispatcher-due"),
    )


@functions_framework.cloud_event
def ce_maintenance(event: Any) -> None:
    run_pubsub_entrypoint(
        event,
        topic="dispatcher-maintenance",
        function="maintenance",
        use_case=USE_CASES.for_topic("dispatcher-maintenance"),
    )


@functions_framework.cloud_event
def ce_sync(event: Any) -> None:
    run_pubsub_entrypoint(
        event,
        topic="dispatcher-sync",
        function="sync",
        use_case=USE_CASES.for_topic("dispatcher-sync"),
    )


@functions_framework.http
def http_fanout(request: flask.Request) -> tuple[str, int]:
    return handle_push_request(
        request,
        topic="dispatcher-due",
        function="fanout",
        use_case=USE_CASES.for_topic("dispatcher-due"),
    )


@functions_framework.http
def http_select(request: flask.Request) -> tuple[str, int]:
    return handle_push_request(
        request,
        topic="dispatcher-ticks",
        function="select",
        use_case=USE_CASES.for_topic("dispatcher-ticks"),
    )
