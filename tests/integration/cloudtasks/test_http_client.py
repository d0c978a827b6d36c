"""The dispatch HTTP client against scripted raw-socket servers (framing and keep-alive)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from emulators.cloudtasks.http_client import KeepAliveClient

pytestmark = pytest.mark.integration

Script = Callable[[socket.socket, bytes, int], bool]
"""Handle one request on a connection: (conn, raw request head, request index) -> keep open."""


class RawServer:
    """Accepts connections and answers each request with a scripted raw response."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.connections = 0
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append(head + b"\r\n\r\n" + body)
                if not self.script(conn, head, len(self.requests) - 1):
                    return

    def url(self, path: str = "/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Script], RawServer]]:
    servers: list[RawServer] = []

    def start(script: Script) -> RawServer:
        server = RawServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_content_length_responses_reuse_one_connection(
    serve: Callable[[Script], RawServer],
) -> None:
    def script(conn: socket.socket, head: bytes, index: int) -> bool:
        conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nhello")
        return True

    server = serve(script)
    client = KeepAliveClient()
    for _ in range(3):
        assert client.request("POST", server.url(), {}, b"abc", 5.0).status == 201
    assert server.connections == 1
    assert server.requests[0].endswith(b"\r\n\r\nabc")
    assert b"Content-Length: 3" in server.requests[0]
    assert f"Host: 127.0.0.1:{server.port}".encode() in server.requests[0]


def test_chunked_response_and_trailers(serve: Callable[[Script], RawServer]) -> None:
    def script(conn: socket.socket, head: bytes, index: int) -> bool:
        conn.sendall(
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\nWiki\r\n6;ext=1\r\npedia!\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        return True

    server = serve(script)
    client = KeepAliveClient()
    assert client.request("GET", server.url(), {}, None, 5.0).status == 500
    assert client.request("GET", server.url(), {}, None, 5.0).status == 500
    assert server.connections == 1


def test_connection_close_and_unframed_body(serve: Callable[[Script], RawServer]) -> None:
    def script(conn: socket.socket, head: bytes, index: int) -> bool:
        conn.sendall(b"HTTP/1.0 404 Not Found\r\n\r\nbody until close")
        return False

    server = serve(script)
    client = KeepAliveClient()
    assert client.request("POST", server.url(), {}, b"", 5.0).status == 404
    assert client.request("POST", server.url(), {}, b"", 5.0).status == 404
    assert server.connections == 2


def test_head_and_204_have_no_body(serve: Callable[[Script], RawServer]) -> None:
    def script(conn: socket.socket, head: bytes, index: int) -> bool:
        if head.startswith(b"HEAD"):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        return True

    server = serve(script)
    client = KeepAliveClient()
    assert client.request("HEAD", server.url(), {}, None, 5.0).status == 200
    assert client.request("DELETE", server.url(), {}, None, 5.0).status == 204
    assert server.connections == 1


def test_idle_connection_closed_by_server_is_retried_once(
    serve: Callable[[Script], RawServer],
) -> None:
    def script(conn: socket.socket, head: bytes, index: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return False  # closes after answering, without announcing it

    server = serve(script)
    client = KeepAliveClient()
    assert client.request("POST", server.url(), {}, b"1", 5.0).status == 200
    assert client.request("POST", server.url(), {}, b"2", 5.0).status == 200
    assert server.connections == 2
    assert len(server.requests) == 2


def test_slow_server_hits_the_deadline(serve: Callable[[Script], RawServer]) -> None:
    release = threading.Event()

    def script(conn: socket.socket, head: bytes, index: int) -> bool:
        release.wait(5)
        return False

    server = serve(script)
    result = KeepAliveClient().request("POST", server.url(), {}, b"", 0.2)
    release.set()
    assert result.status is None
    assert result.timed_out


def test_header_injection_is_dropped_and_path_is_encoded(
    serve: Callable[[Script], RawServer],
) -> None:
    def script(conn: socket.socket, head: bytes, index: int) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        return True

    server = serve(script)
    headers = {"X-Ok": "fine", "X-Bad": "a\r\nInjected: yes"}
    url = server.url("/a path/ü?q=1 2")
    assert KeepAliveClient().request("POST", url, headers, b"", 5.0).status == 200
    request = server.requests[0]
    assert request.startswith(b"POST /a%20path/%C3%BC?q=1%202 HTTP/1.1\r\n")
    assert b"X-Ok: fine" in request
    assert b"Injected" not in request


def test_refused_connection_is_an_error_without_status() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = KeepAliveClient().request("POST", f"http://127.0.0.1:{port}/", {}, b"", 2.0)
    assert result.status is None
    assert result.error
    assert not result.timed_out
