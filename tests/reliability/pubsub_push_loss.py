"""Reproduce the Pub/Sub emulator losing push messages while the endpoint refuses connections.

No dispatcher code is involved: a bare ``gcloud beta emulators pubsub`` with one push
subscription (retry policy 1-2 s, like topics.yaml's ``local.retry``; optionally a dead-letter
policy of 10 attempts), a plain HTTP endpoint answering 200 after 20 ms, 1,000 messages; the
endpoint is closed for 1.6 s once 300 arrived, then served again. Production Pub/Sub would
deliver all 1,000 at least once; prints how many distinct messages the emulator delivered and
how many it dead-lettered.

Run: ``.venv/bin/python -m tests.reliability.pubsub_push_loss [--dead-letter]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from emulators.process import free_port, http_ready

PROJECT = "probe-project"


def _server(port: int, seen: set[str], lock: threading.Lock) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(0.02)
            with lock:
                seen.add(base64.b64decode(body["message"]["data"]).decode())
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    """Run the probe once; print delivered / dead-lettered counts."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--dead-letter", action="store_true")
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args(argv)
    gcloud = shutil.which("gcloud")
    assert gcloud is not None, "gcloud must be installed"
    port, target = free_port(), free_port()
    emulator = subprocess.Popen(
        [
            gcloud,
            "beta",
            "emulators",
            "pubsub",
            "start",
            f"--host-port=127.0.0.1:{port}",
            f"--project={PROJECT}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen: set[str] = set()
    lock = threading.Lock()
    try:
        ready = http_ready(f"http://127.0.0.1:{port}/")
        deadline = time.monotonic() + 60
        while not ready():
            assert time.monotonic() < deadline, "the emulator did not start"
            time.sleep(0.2)
        base = f"http://127.0.0.1:{port}/v1/projects/{PROJECT}"
        for topic in ("probe-topic", "probe-dlq"):
            requests.put(f"{base}/topics/{topic}", json={}, timeout=10).raise_for_status()
        requests.put(
            f"{base}/subscriptions/probe-dlq-sub",
            json={"topic": f"projects/{PROJECT}/topics/probe-dlq"},
            timeout=10,
        ).raise_for_status()
        spec: dict[str, Any] = {
            "topic": f"projects/{PROJECT}/topics/probe-topic",
            "ackDeadlineSeconds": 60,
            "pushConfig": {"pushEndpoint": f"http://127.0.0.1:{target}/"},
            "retryPolicy": {"minimumBackoff": "1s", "maximumBackoff": "2s"},
        }
        if args.dead_letter:
            spec["deadLetterPolicy"] = {
                "deadLetterTopic": f"projects/{PROJECT}/topics/probe-dlq",
                "maxDeliveryAttempts": 10,
            }
        requests.put(f"{base}/subscriptions/probe-sub", json=spec, timeout=10).raise_for_status()
        server = _server(target, seen, lock)
        for start in range(0, args.messages, 100):
            batch = [
                {"data": base64.b64encode(str(i).encode()).decode()}
                for i in range(start, min(start + 100, args.messages))
            ]
            requests.post(
                f"{base}/topics/probe-topic:publish", json={"messages": batch}, timeout=10
            ).raise_for_status()
        while len(seen) < 0.3 * args.messages:
            time.sleep(0.01)
        server.shutdown()
        server.server_close()
        time.sleep(1.6)  # the outage itself: nothing to wait for, it is the fault being injected
        _server(target, seen, lock)
        last, still = -1, 0
        while still < 10:  # 20 s without a new delivery (well past the 2 s max backoff)
            time.sleep(2)
            still = still + 1 if len(seen) == last else 0
            last = len(seen)
        letters = requests.post(
            f"{base}/subscriptions/probe-dlq-sub:pull",
            json={"maxMessages": 1000, "returnImmediately": True},
            timeout=10,
        ).json()
        dead = len(letters.get("receivedMessages", []))
        print(
            f"published {args.messages}, delivered {len(seen)} distinct, dead-lettered {dead}, "
            f"lost {args.messages - len(seen) - dead} "
            f"(dead-letter policy: {'yes' if args.dead_letter else 'no'})"
        )
    finally:
        os.killpg(emulator.pid, signal.SIGKILL)
        emulator.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
