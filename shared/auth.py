"""Verification of Google-signed OIDC tokens: Pub/Sub push requests and Cloud Tasks requests.

Production Pub/Sub and Cloud Tasks attach ``Authorization: Bearer <JWT>`` signed by Google; the
local Cloud Tasks emulator signs with its own key and serves matching certificates, so the same
code verifies both, only the certificates URL differs.

Certificates are cached (Google rotates them over days; a token with an unknown ``kid`` forces
one refresh), so a warm function verifies a token without a network round trip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import requests
from google.auth import exceptions as auth_exceptions
from google.auth import jwt

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
_CERTS_TTL_SECONDS = 300.0


class TokenRejected(Exception):  # noqa: N818 - reads as an outcome, like PermissionError
    """The request's OIDC token is missing or not acceptable; ``reason`` says why (for logs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OidcVerifier:
    """Verify bearer tokens against one certificates URL, caching the certificates."""

    def __init__(
        self,
        certs_url: str = GOOGLE_CERTS_URL,
        *,
        ttl_seconds: float = _CERTS_TTL_SECONDS,
        clock_skew_seconds: int = 10,
    ) -> None:
        self.certs_url = certs_url
        self._ttl = ttl_seconds
        self._skew = clock_skew_seconds
        self._certs: Mapping[str, str] = {}
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()
        self._session = requests.Session()

    def verify(
        self,
        authorization: str | None,
        *,
        audience: str | Sequence[str],
        email: str | None = None,
    ) -> Mapping[str, Any]:
        """Return the token's claims, or raise :class:`TokenRejected`.

        ``audience`` (one value, or any of several) must match the token's ``aud``; when
        ``email`` is given the token must be for that (verified) service account, so a token
        minted for another identity in the same project is refused.
        """
        token = _bearer(authorization)
        try:
            header = jwt.decode_header(token)  # type: ignore[no-untyped-call]
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise TokenRejected(f"malformed token: {exc}") from exc
        certs = self._certificates(force=header.get("kid") not in self._certs)
        try:
            claims: Mapping[str, Any] = jwt.decode(  # type: ignore[no-untyped-call]
                token,
                certs=dict(certs),
                audience=audience if isinstance(audience, str) else list(audience),
                clock_skew_in_seconds=self._skew,
            )
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise TokenRejected(f"invalid token: {exc}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise TokenRejected(f"unexpected issuer {claims.get('iss')!r}")
        if email is not None:
            if claims.get("email") != email:
                raise TokenRejected(f"token is for {claims.get('email')!r}, expected {email!r}")
            if claims.get("email_verified") is not True:
                raise TokenRejected("token email is not verified")
        return claims

    def _certificates(self, force: bool) -> Mapping[str, str]:
        with self._lock:
            fresh = time.monotonic() - self._fetched_at < self._ttl
            if fresh and not force:
                return self._certs
            # A forced refresh (unknown kid) at most once per 10 s: junk tokens must not turn
            # every request into a certificate download.
            if force and time.monotonic() - self._fetched_at < 10.0 and self._certs:
                return self._certs
            try:
                response = self._session.get(self.certs_url, timeout=10)
                response.raise_for_status()
                certs = response.json()
            except (requests.RequestException, ValueError) as exc:
                if self._certs:
                    return self._certs
                raise TokenRejected(
                    f"cannot fetch certificates from {self.certs_url}: {exc}"
                ) from exc
            if not isinstance(certs, dict):
                raise TokenRejected(f"{self.certs_url} did not return a certificate map")
            self._certs = {str(k): str(v) for k, v in certs.items()}
            self._fetched_at = time.monotonic()
            return self._certs


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise TokenRejected("no Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenRejected("Authorization is not a bearer token")
    return token.strip()
