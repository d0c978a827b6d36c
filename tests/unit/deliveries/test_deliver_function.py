"""functions/deliver/main.py served by functions-framework: token, body, answer for Cloud Tasks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from flask import Flask
from flask.testing import FlaskClient

import shared.config
import shared.deliver_http as deliver_http
from emulators.cloudtasks.oidc import TokenSigner
from shared.config import load_settings
from shared.email_settings import load_email_settings
from shared.usecases.deliver import DeliverDependencies
from tests.support.certs import CertServer
from tests.unit.deliveries.fakes import NOW, FakeEmailStore, FakeSubscriptions, ScriptedSender
from tests.unit.deliveries.test_deliver_use_case import alert_body, subscription

ROOT = Path(__file__).resolve().parents[3]
INVOKER = "email-invoker@dispatcher-test.iam.gserviceaccount.com"
URL = "http://localhost/"


@pytest.fixture(scope="module")
def signer() -> TokenSigner:
    return TokenSigner()


@pytest.fixture(scope="module")
def certs(signer: TokenSigner) -> Iterator[CertServer]:
    server = CertServer(signer)
    yield server
    server.stop()


@pytest.fixture
def wired(
    monkeypatch: pytest.MonkeyPatch, certs: CertServer
) -> tuple[FlaskClient, FakeEmailStore, ScriptedSender]:
    store, sender = FakeEmailStore(), ScriptedSender()
    email = load_email_settings(environ={}, service_account=INVOKER)
    deps = DeliverDependencies(
        store=store,
        sender=sender,
        subscriptions=FakeSubscriptions(subscription()),
        settings=email,
        project="p",
        location="l",
        clock=lambda: NOW,
    )
    monkeypatch.setattr(
        shared.config,
        "get_settings",
        lambda: load_settings(environ={}, oidc_certs_url=certs.url),
    )
    monkeypatch.setattr(deliver_http, "_email_settings", lambda: email)
    monkeypatch.setattr(deliver_http, "_dependencies", lambda: deps)
    create_app: Callable[[str, str], Flask] = functions_framework.create_app
    app = create_app("handle", str(ROOT / "functions" / "deliver" / "main.py"))
    return app.test_client(), store, sender


def _post(client: FlaskClient, body: Any, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"X-CloudTasks-TaskName": "t-1", "X-CloudTasks-TaskRetryCount": "0"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = client.post("/", data=data, headers=headers)
    return response.status_code, response.get_json()


def test_a_task_with_a_valid_token_is_sent_once(
    wired: tuple[FlaskClient, FakeEmailStore, ScriptedSender], signer: TokenSigner
) -> None:
    client, store, sender = wired
    token = signer.token(INVOKER, URL)
    status, answer = _post(client, alert_body(), token)
    assert (status, answer["decision"]) == (200, "sent")
    assert answer["message_id"].endswith(".alert@dispatcher.invalid>")
    assert store.only_row().task_name == "t-1"  # Cloud Tasks' own name, from its header
    status, answer = _post(client, alert_body(), token)
    assert (status, answer["decision"]) == (200, "already-sent")
    assert len(sender.sent) == 1


@pytest.mark.parametrize(
    ("who", "audience"),
    [(None, URL), ("someone-else@x.iam.gserviceaccount.com", URL), (INVOKER, "http://evil/")],
)
def test_a_bad_token_is_401_and_nothing_is_touched(
    wired: tuple[FlaskClient, FakeEmailStore, ScriptedSender],
    signer: TokenSigner,
    who: str | None,
    audience: str,
) -> None:
    client, store, sender = wired
    token = None if who is None else signer.token(who, audience)
    status, answer = _post(client, alert_body(), token)
    assert (status, answer["decision"]) == (401, "unauthenticated")
    assert store.rows == {} and sender.sent == []


def test_a_get_is_405_without_an_error_line(
    wired: tuple[FlaskClient, FakeEmailStore, ScriptedSender], caplog: pytest.LogCaptureFixture
) -> None:
    client, store, sender = wired
    with caplog.at_level("INFO"):
        response = client.get("/")
    assert (response.status_code, response.headers["Allow"]) == (405, "POST")
    assert [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")] == []
    assert (store.rows, sender.sent) == ({}, [])


def test_not_json_is_400_and_a_temporary_refusal_is_503(
    wired: tuple[FlaskClient, FakeEmailStore, ScriptedSender], signer: TokenSigner
) -> None:
    from shared.dal.smtp_sender import SmtpTemporaryError

    client, _store, sender = wired
    token = signer.token(INVOKER, URL)
    assert _post(client, b"{not json", token)[0] == 400
    sender.script.append(SmtpTemporaryError("DATA deferred: 421 busy"))
    status, answer = _post(client, alert_body(), token)
    assert (status, answer["decision"], answer["detail"]) == (
        503,
        "retry",
        "DATA deferred: 421 busy",
    )
