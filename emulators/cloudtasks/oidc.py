"""OIDC tokens signed by the emulator's own RSA key, verifiable with google-auth.

The key and a self-signed X.509 certificate are generated when the emulator starts. The
certificates are served in both formats ``google.oauth2.id_token.verify_token`` accepts:
``{"kid": "PEM certificate"}`` (like https://www.googleapis.com/oauth2/v1/certs) and a JWK set
(like https://www.googleapis.com/oauth2/v3/certs).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import threading
import time
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ISSUER = "https://accounts.google.com"
TOKEN_LIFETIME = 3600
# Tokens are reused per (service account, audience) like production caches them, so signing
# (about 1 ms of RSA) does not dominate dispatch; a token is renewed when it has less left.
_RENEW_BEFORE = 300


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def subject_for(email: str) -> str:
    """A stable numeric 'unique id' for a service account, as Google issues for ``sub``."""
    digest = hashlib.sha256(email.encode("utf-8")).digest()
    return str(10**20 + int.from_bytes(digest[:8], "big") % (9 * 10**20))


def default_audience(url: str) -> str:
    """The audience used when oidc_token.audience is empty: the target URL without its query."""
    return url.split("?", 1)[0].split("#", 1)[0]


class TokenSigner:
    """Holds the signing key, its certificate, and a small cache of issued tokens."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(20)
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudtasks-emulator")])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self._key, hashes.SHA256())
        )
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def pem_certs(self) -> dict[str, str]:
        """``{kid: PEM X.509 certificate}``, the oauth2/v1/certs format."""
        pem = self._cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return {self.kid: pem}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWK set, the oauth2/v3/certs format."""
        numbers = self._key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "alg": "RS256",
                    "use": "sig",
                    "kid": self.kid,
                    "n": _b64url_uint(numbers.n),
                    "e": _b64url_uint(numbers.e),
                }
            ]
        }

    def token(self, service_account_email: str, audience: str) -> str:
        """An RS256 ID token for the service account, reused while it has enough life left."""
        key = (service_account_email, audience)
        now = time.time()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[1] - now > _RENEW_BEFORE:
                return cached[0]
        issued = int(now)
        subject = subject_for(service_account_email)
        claims: dict[str, Any] = {
            "aud": audience,
            "azp": subject,
            "email": service_account_email,
            "email_verified": True,
            "exp": issued + TOKEN_LIFETIME,
            "iat": issued,
            "iss": ISSUER,
            "sub": subject,
        }
        token = jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
        with self._lock:
            self._cache[key] = (token, float(issued + TOKEN_LIFETIME))
        return token
