"""The `plan-deliveries` function: a run-completed event in, one email task per recipient out.

Pushed by the `dispatcher-run-completed` subscription (topics.yaml). Thin on purpose: the shared
handler unwraps the push envelope, validates the payload against run-completed.v1.json,
dead-letters permanent errors and answers 5xx for retryable ones; the use case claims each
(delivery, slot, recipient) in the ledger and creates its Cloud Task on the email queue.
"""

from __future__ import annotations

import flask
import functions_framework

from shared.handler import handle_push_request
from shared.usecases.plan_deliveries import plan_deliveries


@functions_framework.http
def handle(request: flask.Request) -> tuple[str, int]:
    # The HTTP signature (not @cloud_event) sees every push, even bodies functions-framework's
    # CloudEvent conversion would refuse before our code runs, so those are dead-lettered too.
    return handle_push_request(
        request,
        topic="dispatcher-run-completed",
        function="plan-deliveries",
        use_case=plan_deliveries,
    )
