"""Sending one email through SMTP, with the server's answer sorted into what to do next.

The conversation is driven step by step (``MAIL``, ``RCPT``, ``DATA``) rather than through
``send_message`` so that the server's acceptance line (``250 2.0.0 Ok: queued as ...``) can be
kept in the ledger: it is what a mail administrator searches for.

Sorting (RFC 5321 reply classes):

* 2xx after DATA: accepted -> :class:`SmtpAccepted`;
* 5xx anywhere (sender, recipient or content refused): :class:`SmtpPermanentError`; sending the
  same message again gets the same answer, so it is not retried;
* 4xx anywhere, a dropped connection, a timeout, a refused connection, a TLS failure:
  :class:`SmtpTemporaryError`; Cloud Tasks retries the task.
"""

from __future__ import annotations

import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from shared.email_settings import EmailSettings
from shared.errors import PermanentError, RetryableError


@dataclass(frozen=True)
class SmtpAccepted:
    """The server took responsibility for the message."""

    reply: str


class SmtpTemporaryError(RetryableError):
    """4xx or no usable connection: the same message may be accepted later."""


class SmtpPermanentError(PermanentError):
    """5xx: the server refuses this message (or recipient) for good."""


def _reply(code: int, text: bytes | str) -> str:
    message = text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
    return f"{code} {message}".strip()


def _raise_for(code: int, text: bytes | str, stage: str) -> None:
    reply = _reply(code, text)
    if 500 <= code < 600:
        raise SmtpPermanentError(f"{stage} refused: {reply}")
    raise SmtpTemporaryError(f"{stage} deferred: {reply}")


class SmtpSender:
    """Sends one :class:`~email.message.EmailMessage` per call, one connection per call.

    A connection per email is deliberate: the deliver function handles one task per request,
    and a pooled connection the relay closed while idle would fail in ways that look like
    refusals.
    """

    def __init__(self, settings: EmailSettings) -> None:
        self._settings = settings

    def _connect(self) -> smtplib.SMTP:
        s = self._settings
        if s.smtp_tls == "implicit":
            return smtplib.SMTP_SSL(
                s.smtp_host,
                s.smtp_port,
                timeout=s.smtp_timeout_seconds,
                context=ssl.create_default_context(),
            )
        client = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_seconds)
        if s.smtp_tls == "starttls":
            client.starttls(context=ssl.create_default_context())
        return client

    def send(self, message: EmailMessage, sender: str, recipient: str) -> SmtpAccepted:
        """Send ``message`` to exactly ``recipient`` (the envelope), whatever its headers say."""
        stage = "connect"
        try:
            with self._connect() as client:
                client.ehlo_or_helo_if_needed()
                if self._settings.smtp_user:
                    client.login(self._settings.smtp_user, self._settings.smtp_password or "")
                code, text = client.mail(sender)
                if code != 250:
                    _raise_for(code, text, "MAIL FROM")
                code, text = client.rcpt(recipient)
                if code not in (250, 251):
                    _raise_for(code, text, "RCPT TO")
                # smtplib fixes line endings only for str data: bytes must already be CRLF,
                # or the server sees one endless line (aiosmtpd: "500 Line too long").
                wire = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
                stage = "data"
                code, text = client.data(wire)
                if code != 250:
                    _raise_for(code, text, "DATA")
                return SmtpAccepted(_reply(code, text))
        except (SmtpPermanentError, SmtpTemporaryError):
            raise
        except smtplib.SMTPAuthenticationError as exc:
            # A wrong password stays wrong until someone rotates the secret: retrying for a
            # day would hide it. 535 is the usual code; treat it like any 5xx.
            _raise_for(exc.smtp_code, exc.smtp_error, "AUTH")
            raise  # unreachable: _raise_for always raises
        except smtplib.SMTPResponseException as exc:
            _raise_for(exc.smtp_code, exc.smtp_error, "SMTP")
            raise
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            # Refused or dropped connections, timeouts, TLS handshakes: the relay may be back.
            where = f"{self._settings.smtp_host}:{self._settings.smtp_port}"
            if stage == "data":
                # The message was on the wire and no verdict came back (RFC 1047): the server
                # may have accepted it. Say so, so that an operator reading a duplicate knows.
                raise SmtpTemporaryError(
                    f"no reply from {where} after the message was sent (it may have been "
                    f"delivered): {type(exc).__name__}: {exc}"
                ) from exc
            raise SmtpTemporaryError(
                f"no SMTP conversation with {where}: {type(exc).__name__}: {exc}"
            ) from exc
