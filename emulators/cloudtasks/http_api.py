"""The emulator's small HTTP side: readiness, signing certificates, dispatch history, debug.

Endpoints (all JSON unless noted):

- ``GET /healthz``: 200 ``ok`` once the gRPC server is serving, 503 before.
- ``GET /certs``: ``{kid: PEM certificate}`` (the oauth2/v1/certs format).
- ``GET /jwks``: JWK set (the oauth2/v3/certs format).
- ``GET /history?task=<full task name>``: attempts of a live or tombstoned task, 404 if unknown.
- ``GET /queues``: one summary per queue.
- ``POST /reset``: drop every queue, task and tombstone (for test isolation).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulators.cloudtasks.core import Emulator
from emulators.cloudtasks.errors import RpcError


def build_http_server(
    host: str, port: int, emulator: Emulator, is_ready: Callable[[], bool]
) -> ThreadingHTTPServer:
    """A threading HTTP server bound to (host, port); call ``serve_forever`` in a thread."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            # Access logs would drown the structured JSON log on stdout.
            return

        def _send(
            self,
            status: int,
            payload: Any,
            content_type: str = "application/json",
            cacheable: bool = False,
        ) -> None:
            if content_type == "application/json":
                body = json.dumps(payload, indent=None, separators=(",", ":")).encode("utf-8")
            else:
                body = str(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            # Like Google's certificate endpoints; everything else is live state.
            self.send_header("Cache-Control", "public, max-age=3600" if cacheable else "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            if parts.path == "/healthz":
                if is_ready():
                    self._send(200, "ok", "text/plain")
                else:
                    self._send(503, "starting", "text/plain")
            elif parts.path == "/certs":
                self._send(200, emulator.signer.pem_certs(), cacheable=True)
            elif parts.path == "/jwks":
                self._send(200, emulator.signer.jwks(), cacheable=True)
            elif parts.path == "/queues":
                self._send(200, {"queues": emulator.queue_stats()})
            elif parts.path == "/history":
                names = query.get("task")
                if not names:
                    self._send(400, {"error": "query parameter 'task' is required"})
                    return
                try:
                    history = emulator.history(names[0])
                except RpcError as exc:
                    self._send(400, {"error": exc.message})
                    return
                if history is None:
                    self._send(404, {"error": f"unknown task {names[0]}"})
                else:
                    self._send(200, history)
            else:
                self._send(404, {"error": f"no such endpoint {parts.path}"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if urlsplit(self.path).path == "/reset":
                emulator.reset()
                self._send(200, {"reset": True})
            else:
                self._send(404, {"error": f"no such endpoint {self.path}"})

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    """Run ``server.serve_forever`` on a daemon thread."""
    thread = threading.Thread(target=server.serve_forever, name="cloudtasks-http", daemon=True)
    thread.start()
    return thread
