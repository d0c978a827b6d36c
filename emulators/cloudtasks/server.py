"""Start and stop the emulator (gRPC + HTTP) in the current process."""

from __future__ import annotations

import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TextIO

import grpc

from emulators.cloudtasks.core import Emulator, EmulatorConfig
from emulators.cloudtasks.grpc_service import build_handler
from emulators.cloudtasks.http_api import build_http_server, serve_in_thread

DEFAULT_GRPC_WORKERS = 16


@dataclass
class EmulatorHandle:
    """A running emulator: where to reach it, direct state access, and ``stop()``."""

    host: str
    port: int
    http_port: int
    emulator: Emulator
    _grpc_server: grpc.Server
    _http_server: Any
    _http_thread: threading.Thread

    @property
    def grpc_target(self) -> str:
        """``host:port`` for ``grpc.insecure_channel`` and ``CLOUD_TASKS_EMULATOR_HOST``."""
        return f"{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def certs_url(self) -> str:
        """PEM certificates keyed by kid (pass as ``certs_url`` to google-auth)."""
        return f"{self.http_url}/certs"

    @property
    def jwks_url(self) -> str:
        return f"{self.http_url}/jwks"

    def history(self, task_name: str) -> dict[str, Any] | None:
        """Dispatch history of a task (same JSON as ``GET /history?task=``)."""
        return self.emulator.history(task_name)

    def reset(self) -> None:
        """Drop all queues, tasks and tombstones."""
        self.emulator.reset()

    def stop(self, grace: float = 1.0) -> None:
        """Stop gRPC, HTTP and the dispatcher."""
        self._grpc_server.stop(grace).wait(grace + 1.0)
        self._http_server.shutdown()
        self._http_server.server_close()
        self.emulator.stop()


def start_server(
    host: str = "127.0.0.1",
    port: int = 0,
    http_port: int = 0,
    *,
    tombstone_seconds: float = 3600.0,
    queue_tombstone_seconds: float = 7 * 86400.0,
    min_dispatch_deadline: float = 15.0,
    dispatch_workers: int = 64,
    grpc_workers: int = DEFAULT_GRPC_WORKERS,
    log_stream: TextIO | None = sys.stdout,
) -> EmulatorHandle:
    """Start the emulator; port 0 picks a free port (read it from the handle).

    ``log_stream=None`` disables the JSON log (benchmarks). The HTTP ``/healthz`` endpoint
    answers 200 only after the gRPC server has started.
    """
    config = EmulatorConfig(
        tombstone_seconds=tombstone_seconds,
        queue_tombstone_seconds=queue_tombstone_seconds,
        min_dispatch_deadline=min_dispatch_deadline,
        dispatch_workers=dispatch_workers,
    )
    emulator = Emulator(config, log_stream)
    ready = threading.Event()
    http_server = build_http_server(host, http_port, emulator, ready.is_set)
    http_thread = serve_in_thread(http_server)
    grpc_server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=grpc_workers, thread_name_prefix="cloudtasks-grpc"),
        handlers=[build_handler(emulator)],
        options=[("grpc.so_reuseport", 0)],
    )
    try:
        bound = grpc_server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        http_server.shutdown()
        http_server.server_close()
        emulator.stop()
        raise OSError(f"cannot bind gRPC port {host}:{port}: {exc}") from exc
    grpc_server.start()
    ready.set()
    emulator.log.emit(
        "ready",
        "cloudtasks emulator serving",
        grpc=f"{host}:{bound}",
        http=f"http://{host}:{http_server.server_address[1]}",
    )
    return EmulatorHandle(
        host=host,
        port=bound,
        http_port=int(http_server.server_address[1]),
        emulator=emulator,
        _grpc_server=grpc_server,
        _http_server=http_server,
        _http_thread=http_thread,
    )
