"""A minimal keep-alive HTTP client for dispatch workers.

``requests`` costs several hundred microseconds per call in pure-Python overhead; dispatch is the
emulator's hot path, so each worker thread keeps one ``http.client`` connection per origin and
reuses it. A request that fails on a *reused* connection before any response byte arrives is
retried once on a fresh connection: the server closed an idle keep-alive connection, which is
not the target's failure.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

_STALE_ERRORS = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


@dataclass(frozen=True, slots=True)
class HttpResult:
    """Outcome of one request: a status (None when no response) and an error description."""

    status: int | None
    error: str | None = None
    timed_out: bool = False


class KeepAliveClient:
    """Thread-safe facade over per-thread, per-origin persistent connections."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._ssl_context = ssl.create_default_context()

    def _connections(self) -> dict[tuple[str, str, int], http.client.HTTPConnection]:
        conns: dict[tuple[str, str, int], http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None
        )
        if conns is None:
            conns = {}
            self._local.conns = conns
        return conns

    def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> HttpResult:
        """Send one request and read the whole response within roughly ``timeout`` seconds."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        key = (scheme, host, port)
        conns = self._connections()
        for fresh_try in (False, True):
            conn = conns.get(key)
            reused = conn is not None and not fresh_try
            if conn is None or fresh_try:
                if conn is not None:
                    conn.close()
                if scheme == "https":
                    conn = http.client.HTTPSConnection(
                        host, port, timeout=timeout, context=self._ssl_context
                    )
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=timeout)
                conns[key] = conn
            else:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.will_close:
                    conn.close()
                    del conns[key]
                return HttpResult(status=response.status)
            except TimeoutError:
                conn.close()
                conns.pop(key, None)
                return HttpResult(status=None, error="deadline exceeded", timed_out=True)
            except _STALE_ERRORS as exc:
                conn.close()
                conns.pop(key, None)
                if reused:
                    continue
                return HttpResult(status=None, error=f"{type(exc).__name__}: {exc}")
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conns.pop(key, None)
                return HttpResult(status=None, error=f"{type(exc).__name__}: {exc}")
        return HttpResult(status=None, error="connection closed")  # pragma: no cover

    def close_thread_connections(self) -> None:
        """Close the calling thread's connections."""
        for conn in self._connections().values():
            conn.close()
        self._connections().clear()
