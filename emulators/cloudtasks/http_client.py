"""A small keep-alive HTTP/1.1 client for dispatch workers.

Dispatch is the emulator's hot path. ``requests`` costs several hundred microseconds per call
and even ``http.client`` spends a good part of each request in the ``email`` header parser, so
each worker thread keeps one plain socket per origin and speaks just the HTTP/1.1 it needs:
Content-Length and chunked bodies, ``Connection: close``, HEAD/204/304 without a body.

A request that fails on a *reused* connection before any response byte arrives is retried once
on a fresh connection: the server closed an idle keep-alive connection, which is not the
target's failure.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

_MAX_HEAD = 64 * 1024
_PATH_SAFE = "/:@!$&'()*+,;=-._~%?[]"


@dataclass(frozen=True, slots=True)
class HttpResult:
    """Outcome of one request: a status (None when no response) and an error description."""

    status: int | None
    error: str | None = None
    timed_out: bool = False


class _StaleConnectionError(Exception):
    """The peer closed a reused connection before answering."""


class _Connection:
    __slots__ = ("buffer", "host_header", "sock")

    def __init__(self, sock: socket.socket, host_header: bytes) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.host_header = host_header

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class _Deadline:
    __slots__ = ("at",)

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("deadline exceeded")
        return left


def _recv_more(conn: _Connection, deadline: _Deadline) -> bool:
    conn.sock.settimeout(deadline.remaining())
    chunk = conn.sock.recv(65536)
    if not chunk:
        return False
    conn.buffer += chunk
    return True


def _read_exact(conn: _Connection, size: int, deadline: _Deadline) -> None:
    while len(conn.buffer) < size:
        if not _recv_more(conn, deadline):
            raise ConnectionError("connection closed inside the response body")
    del conn.buffer[:size]


def _read_line(conn: _Connection, deadline: _Deadline) -> bytes:
    while True:
        end = conn.buffer.find(b"\r\n")
        if end >= 0:
            line = bytes(conn.buffer[:end])
            del conn.buffer[: end + 2]
            return line
        if len(conn.buffer) > _MAX_HEAD:
            raise ConnectionError("response line too long")
        if not _recv_more(conn, deadline):
            raise ConnectionError("connection closed inside a chunked body")


def _read_response(conn: _Connection, method: str, deadline: _Deadline) -> tuple[int, bool]:
    """Read one response; return (status, keep_alive)."""
    first = True
    while True:
        end = conn.buffer.find(b"\r\n\r\n")
        while end < 0:
            if len(conn.buffer) > _MAX_HEAD:
                raise ConnectionError("response headers too large")
            if not _recv_more(conn, deadline):
                if first and not conn.buffer:
                    raise _StaleConnectionError
                raise ConnectionError("connection closed inside the response headers")
            first = False
            end = conn.buffer.find(b"\r\n\r\n")
        head = bytes(conn.buffer[:end]).decode("latin-1")
        del conn.buffer[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ConnectionError(f"malformed status line {lines[0]!r}")
        status = int(parts[1])
        if 100 <= status < 200:
            continue  # interim response; the final one follows
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        keep_alive = parts[0] == "HTTP/1.1" and "close" not in connection
        if parts[0] == "HTTP/1.0" and "keep-alive" in connection:
            keep_alive = True
        if method == "HEAD" or status in {204, 304}:
            return status, keep_alive
        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size = int(_read_line(conn, deadline).split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while _read_line(conn, deadline):
                        pass  # trailers
                    break
                _read_exact(conn, size + 2, deadline)
            return status, keep_alive
        if "content-length" in headers:
            _read_exact(conn, int(headers["content-length"]), deadline)
            return status, keep_alive
        # No length: the body runs until the server closes the connection.
        while _recv_more(conn, deadline):
            conn.buffer.clear()
        return status, False


class KeepAliveClient:
    """Thread-safe facade over per-thread, per-origin persistent connections."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._ssl_context = ssl.create_default_context()

    def _connections(self) -> dict[tuple[str, str, int], _Connection]:
        conns: dict[tuple[str, str, int], _Connection] | None = getattr(self._local, "conns", None)
        if conns is None:
            conns = {}
            self._local.conns = conns
        return conns

    def _connect(self, scheme: str, host: str, port: int, deadline: _Deadline) -> _Connection:
        sock = socket.create_connection((host, port), timeout=deadline.remaining())
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        default_port = 443 if scheme == "https" else 80
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
        host_text = f"[{ascii_host}]" if ":" in ascii_host else ascii_host
        host_header = host_text if port == default_port else f"{host_text}:{port}"
        if scheme == "https":
            sock = self._ssl_context.wrap_socket(sock, server_hostname=host)
        return _Connection(sock, host_header.encode("ascii"))

    def request(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> HttpResult:
        """Send one request and read the whole response within ``timeout`` seconds."""
        deadline = _Deadline(timeout)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path = f"{path}?{quote(parts.query, safe=_PATH_SAFE)}"
        key = (scheme, host, port)
        conns = self._connections()
        payload = body or b""
        for attempt in range(2):
            conn = conns.pop(key, None)
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect(scheme, host, port, deadline)
                head = [f"{method} {path} HTTP/1.1".encode("latin-1"), b"Host: " + conn.host_header]
                for name, value in headers.items():
                    if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                        continue  # never let a header value split the request
                    head.append(f"{name}: {value}".encode())
                if payload or method in {"POST", "PUT", "PATCH"}:
                    head.append(b"Content-Length: %d" % len(payload))
                conn.sock.settimeout(deadline.remaining())
                conn.sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + payload)
                status, keep_alive = _read_response(conn, method, deadline)
            except TimeoutError:
                if conn is not None:
                    conn.close()
                return HttpResult(status=None, error="deadline exceeded", timed_out=True)
            except (
                _StaleConnectionError,
                ConnectionResetError,
                BrokenPipeError,
                ConnectionAbortedError,
            ) as exc:
                if conn is not None:
                    conn.close()
                if reused and attempt == 0:
                    continue
                reason = (
                    "connection closed before a response"
                    if isinstance(exc, _StaleConnectionError)
                    else exc
                )
                return HttpResult(status=None, error=f"{type(exc).__name__}: {reason}")
            except (OSError, ValueError) as exc:
                if conn is not None:
                    conn.close()
                return HttpResult(status=None, error=f"{type(exc).__name__}: {exc}")
            if keep_alive:
                conns[key] = conn
            else:
                conn.close()
            return HttpResult(status=status)
        return HttpResult(status=None, error="connection closed")  # pragma: no cover
