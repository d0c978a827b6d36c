"""OIDC verification of push and task requests, with tokens signed as the emulator signs them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from emulators.cloudtasks.oidc import TokenSigner
from shared import config, handler
from shared.auth import OidcVerifier, TokenRejected
from tests.support.certs import CertServer
from tests.unit.contracts.conftest import client, install_fakes, push_body
from tests.unit.contracts.recorder import DEAD_LETTERS, USE_CASES

PUSH_SA = "pubsub-push@dispatcher-test.iam.gserviceaccount.com"
AUDIENCE = "https://select.example.run.app/"


@pytest.fixture(scope="module")
def signer() -> TokenSigner:
    return TokenSigner()


@pytest.fixture
def certs(signer: TokenSigner) -> Iterator[CertServer]:
    server = CertServer(signer)
    yield server
    server.stop()


def test_a_token_for_the_expected_identity_and_audience_verifies(
    signer: TokenSigner, certs: CertServer
) -> None:
    verifier = OidcVerifier(certs.url)
    claims = verifier.verify(
        f"Bearer {signer.token(PUSH_SA, AUDIENCE)}", audience=AUDIENCE, email=PUSH_SA
    )
    assert claims["email"] == PUSH_SA and claims["aud"] == AUDIENCE
    verifier.verify(f"Bearer {signer.token(PUSH_SA, AUDIENCE)}", audience=AUDIENCE)
    assert certs.fetches == 1, "certificates must be cached between verifications"


@pytest.mark.parametrize(
    ("header", "audience", "email", "reason"),
    [
        (None, AUDIENCE, PUSH_SA, "no Authorization header"),
        ("Basic abc", AUDIENCE, PUSH_SA, "not a bearer token"),
        ("Bearer not-a-jwt", AUDIENCE, PUSH_SA, "malformed token"),
        ("TOKEN", "https://other.example/", PUSH_SA, "invalid token"),
        ("TOKEN", AUDIENCE, "someone-else@example.iam.gserviceaccount.com", "token is for"),
    ],
)
def test_unacceptable_tokens_are_refused_with_a_reason(
    signer: TokenSigner,
    certs: CertServer,
    header: str | None,
    audience: str,
    email: str,
    reason: str,
) -> None:
    if header == "TOKEN":
        header = f"Bearer {signer.token(PUSH_SA, AUDIENCE)}"
    with pytest.raises(TokenRejected, match=reason):
        OidcVerifier(certs.url).verify(header, audience=audience, email=email)


def test_a_token_signed_by_another_key_is_refused(certs: CertServer) -> None:
    forged = TokenSigner().token(PUSH_SA, AUDIENCE)
    with pytest.raises(TokenRejected, match="invalid token"):
        OidcVerifier(certs.url).verify(f"Bearer {forged}", audience=AUDIENCE, email=PUSH_SA)


@pytest.fixture
def push_auth_on(certs: CertServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("DISPATCHER_PUSH_AUTH_VERIFY", "true")
    monkeypatch.setenv("DISPATCHER_PUSH_AUTH_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("DISPATCHER_OIDC_CERTS_URL", certs.url)
    settings = replace(config.load_settings(), push_auth_service_account=PUSH_SA)
    monkeypatch.setattr(config, "get_settings", lambda: settings)
    # The recorders are module globals: forget what earlier test modules left in them.
    install_fakes()
    yield


def _push(token: str | None) -> Any:
    body = push_body(json.dumps({"subscription_id": "acme-news"}).encode())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client("http_fanout").post("/", json=body, headers=headers)


@pytest.mark.usefixtures("push_auth_on")
def test_push_without_a_valid_token_is_refused_and_neither_processed_nor_dead_lettered(
    signer: TokenSigner,
) -> None:
    for token in (None, TokenSigner().token(PUSH_SA, AUDIENCE)):
        response = _push(token)
        assert response.status_code == 401
    assert USE_CASES.calls == [] and DEAD_LETTERS.published == []


@pytest.mark.usefixtures("push_auth_on")
def test_push_with_a_valid_token_is_processed(signer: TokenSigner) -> None:
    response = _push(signer.token(PUSH_SA, AUDIENCE))
    assert response.status_code == 200
    assert len(USE_CASES.calls) == 1


def test_verification_is_off_unless_configured() -> None:
    assert not config.load_settings(environ={}).push_auth_verify
    route = handler.Route("t", "f", "s", "t-dlq", 1)
    assert handler.authorize_push(None, "select.example.run.app", route) is None


def test_without_a_configured_audience_the_functions_own_https_url_is_expected(
    signer: TokenSigner, certs: CertServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = replace(
        config.load_settings(),
        push_auth_verify=True,
        push_auth_audience="",
        push_auth_service_account=PUSH_SA,
        oidc_certs_url=certs.url,
    )
    monkeypatch.setattr(config, "get_settings", lambda: settings)
    route = handler.Route("t", "f", "s", "t-dlq", 1)
    own = signer.token(PUSH_SA, "https://select-abc.a.run.app")
    other = signer.token(PUSH_SA, "https://fanout-abc.a.run.app")
    assert handler.authorize_push(f"Bearer {own}", "select-abc.a.run.app", route) is None
    assert handler.authorize_push(f"Bearer {other}", "select-abc.a.run.app", route) == (
        "unauthorized",
        401,
    )
