"""The `deliver` function: one email task from Cloud Tasks in, at most one email out.

An HTTP target of the email queue (not a Pub/Sub push target), called with an OIDC token. Thin
on purpose: shared/deliver_http.py checks the token and decodes the body; the use case
(shared/usecases/deliver.py) claims the email's ledger row, renders, sends through SMTP and
records what the server answered. The status tells Cloud Tasks whether to retry.
"""

from __future__ import annotations

from collections.abc import Mapping

import flask
import functions_framework

from shared.deliver_http import handle_email_task


@functions_framework.http
def handle(request: flask.Request) -> tuple[str, int, Mapping[str, str]]:
    return handle_email_task(request)
