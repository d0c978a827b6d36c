"""A local server of one signer's certificates, standing in for Google's (or the Cloud Tasks
emulator's) certificate endpoint in token-verification tests."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.cloudtasks.oidc import TokenSigner


class CertServer:
    """Serves ``signer``'s certificates on a free local port, counting fetches (a verifier's
    cache must spare them). :meth:`stop` shuts it down."""

    def __init__(self, signer: TokenSigner) -> None:
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(signer.pem_certs()).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
