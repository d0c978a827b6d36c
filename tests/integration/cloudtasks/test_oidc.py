"""OIDC tokens on dispatched requests verify with google-auth against the emulator's certs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import google.auth.transport.requests
import pytest
from google.cloud import tasks_v2
from google.oauth2 import id_token

from emulators.cloudtasks import EmulatorHandle

pytestmark = pytest.mark.integration

SERVICE_ACCOUNT = "fanout@test-project.iam.gserviceaccount.com"


def _token(hit: Any) -> str:
    header: str = hit.headers["Authorization"]
    scheme, _, token = header.partition(" ")
    assert scheme == "Bearer"
    return token


@pytest.fixture
def queue_name(queue_factory: Callable[..., tasks_v2.Queue]) -> str:
    return queue_factory().name


def _dispatch(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_name: str,
    url: str,
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
    audience: str = "",
) -> str:
    oidc: dict[str, str] = {"service_account_email": SERVICE_ACCOUNT}
    if audience:
        oidc["audience"] = audience
    client.create_task(
        parent=queue_name,
        task=tasks_v2.Task({"http_request": {"url": url, "oidc_token": oidc}}),
    )
    (hit,) = poll(lambda: target.hits(bucket))
    return _token(hit)


@pytest.mark.parametrize("certs", ["certs_url", "jwks_url"])
def test_token_verifies_with_google_auth_and_default_audience(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_name: str,
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
    emulator: EmulatorHandle,
    certs: str,
) -> None:
    url = target.url("ok", bucket, query="x=1")
    token = _dispatch(
        client=client, queue_name=queue_name, url=url, target=target, bucket=bucket, poll=poll
    )
    audience = url.split("?", 1)[0]
    claims = id_token.verify_token(
        token,
        google.auth.transport.requests.Request(),
        audience=audience,
        certs_url=getattr(emulator, certs),
    )
    assert claims["aud"] == audience
    assert claims["email"] == SERVICE_ACCOUNT
    assert claims["email_verified"] is True
    assert claims["iss"] == "https://accounts.google.com"
    assert claims["sub"].isdigit()
    assert claims["exp"] > claims["iat"]


def test_explicit_audience_is_used_and_a_wrong_one_fails(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_name: str,
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
    emulator: EmulatorHandle,
) -> None:
    audience = "https://collector.example.run.app"
    token = _dispatch(
        client=client,
        queue_name=queue_name,
        url=target.url("ok", bucket),
        target=target,
        bucket=bucket,
        poll=poll,
        audience=audience,
    )
    request = google.auth.transport.requests.Request()
    claims = id_token.verify_token(token, request, audience=audience, certs_url=emulator.certs_url)
    assert claims["aud"] == audience
    with pytest.raises(ValueError):
        id_token.verify_token(
            token, request, audience="https://other.example", certs_url=emulator.certs_url
        )


def test_token_from_another_emulator_does_not_verify(
    *,
    client: tasks_v2.CloudTasksClient,
    queue_name: str,
    target: Any,
    bucket: str,
    poll: Callable[..., Any],
    private_emulator: Callable[..., EmulatorHandle],
) -> None:
    url = target.url("ok", bucket)
    token = _dispatch(
        client=client, queue_name=queue_name, url=url, target=target, bucket=bucket, poll=poll
    )
    stranger = private_emulator()
    with pytest.raises(ValueError):
        id_token.verify_token(
            token,
            google.auth.transport.requests.Request(),
            audience=url,
            certs_url=stranger.certs_url,
        )
