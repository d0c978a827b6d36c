"""The `fanout` function: a due message in, one Cloud Task per source out, exactly once.

Pushed by the `dispatcher-due` subscription (topics.yaml). Thin on purpose: the shared handler
unwraps the push envelope, validates the payload against the topic's contract, dead-letters
permanent errors and answers 5xx for retryable ones; the use case does the work.
"""

from __future__ import annotations

import flask
import functions_framework

from shared.handler import handle_push_request
from shared.wiring import fanout


@functions_framework.http
def handle(request: flask.Request) -> tuple[str, int]:
    # The HTTP signature (not @cloud_event) sees every push, even bodies functions-framework's
    # CloudEvent conversion would refuse before our code runs, so those are dead-lettered too.
    return handle_push_request(request, topic="dispatcher-due", function="fanout", use_case=fanout)
