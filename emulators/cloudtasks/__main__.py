"""``python -m emulators.cloudtasks --host H --port P [--http-port HP] [--tombstone-seconds S]``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from emulators.cloudtasks.server import DEFAULT_GRPC_WORKERS, start_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; see emulators/cloudtasks/README.md."""
    parser = argparse.ArgumentParser(prog="python -m emulators.cloudtasks")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="gRPC port")
    # Optional: most users only need the gRPC port; the HTTP side (healthz, certs, history) gets
    # a free port, printed on start, so nobody has to invent a second port number.
    parser.add_argument(
        "--http-port",
        type=int,
        default=0,
        help="healthz/certs/history port (default: a free one, printed on start)",
    )
    parser.add_argument(
        "--tombstone-seconds",
        type=float,
        default=3600.0,
        help="how long a used task name stays reserved (production: 1 hour)",
    )
    parser.add_argument(
        "--queue-tombstone-seconds",
        type=float,
        default=7 * 86400.0,
        help="how long a deleted queue's name stays reserved (production: 7 days)",
    )
    parser.add_argument(
        "--min-dispatch-deadline",
        type=float,
        default=15.0,
        help="lowest accepted Task.dispatch_deadline (production: 15 s)",
    )
    parser.add_argument(
        "--dispatch-workers",
        type=int,
        default=256,
        help="most HTTP dispatch threads (started on demand), also the global in-flight cap",
    )
    parser.add_argument(
        "--grpc-workers",
        type=int,
        default=DEFAULT_GRPC_WORKERS,
        help="threads of the thread-pool gRPC server (with --grpc-threads)",
    )
    parser.add_argument(
        "--grpc-threads",
        action="store_true",
        help="serve gRPC from a thread pool instead of a grpc.aio event loop",
    )
    parser.add_argument("--quiet", action="store_true", help="no JSON log lines")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT."""
    args = parse_args(argv)
    handle = start_server(
        args.host,
        args.port,
        args.http_port,
        tombstone_seconds=args.tombstone_seconds,
        queue_tombstone_seconds=args.queue_tombstone_seconds,
        min_dispatch_deadline=args.min_dispatch_deadline,
        dispatch_workers=args.dispatch_workers,
        grpc_workers=args.grpc_workers,
        grpc_asyncio=not args.grpc_threads,
        log_stream=None if args.quiet else sys.stdout,
    )
    # One plain line on stderr, even with --quiet: the only way to learn a picked HTTP port.
    print(
        f"cloudtasks emulator: gRPC {handle.grpc_target}, HTTP {handle.http_url} "
        f"(export CLOUD_TASKS_EMULATOR_HOST={handle.grpc_target})",
        file=sys.stderr,
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    handle.stop()
    sys.stdout.flush()
    # Dispatch workers may still be blocked on a slow target for up to its dispatch deadline;
    # interpreter shutdown would join them, so leave without waiting (state is in memory only).
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
