"""A collector stub: accepts the HTTP tasks Cloud Tasks dispatches and records every one.

Each request is appended as one JSON line (method, path, headers, body, received_at) to the
record file, flushed before the response, so the CLI and tests can read what arrived even
after a crash. ``GET /requests`` returns the records; ``DELETE /requests`` clears them.

With ``--certs-url`` the collector verifies each task's OIDC token as a production collector
must (audience = the URL it was called on, issuer Google, and with ``--service-account`` the
task's identity): a request without a valid token is answered 401 and recorded as refused.

Tests can make the collector misbehave: ``POST /control`` with ``{"fail_status": 503,
"fail_count": 3}`` answers the next three task requests with 503.

Run: ``python -m emulators.collector --port 8090 --record-file .dispatcher/collector.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shared.auth import OidcVerifier, TokenRejected


class CollectorState:
    """Recorded requests and the failure plan, shared by the handler threads."""

    def __init__(
        self,
        record_file: Path,
        verifier: OidcVerifier | None = None,
        service_account: str | None = None,
    ) -> None:
        self.record_file = record_file
        self.verifier = verifier
        self.service_account = service_account
        self.lock = threading.Lock()
        self.records: list[dict[str, Any]] = []
        self.fail_status = 0
        self.fail_remaining = 0
        record_file.parent.mkdir(parents=True, exist_ok=True)
        record_file.touch()

    def record(self, entry: dict[str, Any]) -> int:
        """Store a request and return the status the collector answers with."""
        with self.lock:
            status = 200
            if entry.get("auth", {}).get("verified") is False:
                status = 401
            elif self.fail_remaining > 0:
                self.fail_remaining -= 1
                status = self.fail_status
            entry["status"] = status
            self.records.append(entry)
            with self.record_file.open("a") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")
            return status

    def clear(self) -> None:
        with self.lock:
            self.records.clear()
            self.record_file.write_text("")


def make_handler(state: CollectorState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            # One JSON line per request is written by do_POST; the default access log is noise.
            return

        def _reply(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _verify(self) -> dict[str, Any]:
            assert state.verifier is not None
            # The audience is the URL the task was sent to, without its query (Cloud Tasks'
            # default, and what fanout asks for explicitly).
            audience = f"http://{self.headers.get('Host')}{self.path.split('?', 1)[0]}"
            try:
                claims = state.verifier.verify(
                    self.headers.get("Authorization"),
                    audience=audience,
                    email=state.service_account,
                )
            except TokenRejected as exc:
                return {"verified": False, "reason": exc.reason}
            return {"verified": True, "email": claims.get("email")}

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._reply(200, {"status": "ok"})
            elif self.path == "/requests":
                with state.lock:
                    self._reply(200, list(state.records))
            else:
                self._reply(404, {"error": "not found"})

        def do_DELETE(self) -> None:
            if self.path == "/requests":
                state.clear()
                self._reply(200, {"cleared": True})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            raw = self._body()
            if self.path == "/control":
                plan = json.loads(raw or b"{}")
                with state.lock:
                    state.fail_status = int(plan.get("fail_status", 500))
                    state.fail_remaining = int(plan.get("fail_count", 0))
                self._reply(
                    200, {"fail_status": state.fail_status, "fail_remaining": state.fail_remaining}
                )
                return
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            entry = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
                "received_at": datetime.now(UTC).isoformat(),
            }
            if state.verifier is not None:
                entry["auth"] = self._verify()
            status = state.record(entry)
            print(
                json.dumps(
                    {
                        "severity": "INFO",
                        "message": "task received",
                        "path": self.path,
                        "task": entry["headers"].get("x-cloudtasks-taskname"),
                        "status": status,
                    }
                ),
                flush=True,
            )
            self._reply(status, {"recorded": True})

    return Handler


def serve(
    host: str,
    port: int,
    record_file: Path,
    certs_url: str | None = None,
    service_account: str | None = None,
) -> ThreadingHTTPServer:
    """Create (not start) the collector server; call ``serve_forever`` on it."""
    verifier = OidcVerifier(certs_url) if certs_url else None
    state = CollectorState(record_file, verifier, service_account)
    server = ThreadingHTTPServer((host, port), make_handler(state))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--record-file", type=Path, default=Path(".dispatcher/collector.jsonl"))
    parser.add_argument("--certs-url", help="verify task OIDC tokens against these certificates")
    parser.add_argument("--service-account", help="the identity task tokens must carry")
    args = parser.parse_args(argv)
    server = serve(args.host, args.port, args.record_file, args.certs_url, args.service_account)
    print(
        json.dumps(
            {
                "severity": "INFO",
                "message": "collector listening",
                "url": f"http://{args.host}:{args.port}",
            }
        ),
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
