"""The `results` function: a collector's report on one task in, the ledger moved forward.

Pushed by the `dispatcher-results` subscription (topics.yaml). Thin on purpose: the shared
handler unwraps the push envelope, validates the payload against result.v1.json, dead-letters
permanent errors (an unknown dispatch key) and answers 5xx for retryable ones; the use case
records the outcome and publishes run-completed when the run is done.
"""

from __future__ import annotations

import flask
import functions_framework

from shared.handler import handle_push_request
from shared.wiring import record_result


@functions_framework.http
def handle(request: flask.Request) -> tuple[str, int]:
    # The HTTP signature (not @cloud_event) sees every push, even bodies functions-framework's
    # CloudEvent conversion would refuse before our code runs, so those are dead-lettered too.
    return handle_push_request(
        request, topic="dispatcher-results", function="results", use_case=record_result
    )
