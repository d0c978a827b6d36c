"""Start and stop the emulator (gRPC + HTTP) in the current process."""

from __future__ import annotations

import asyncio
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import grpc
import grpc.aio

from emulators.cloudtasks.core import Emulator, EmulatorConfig
from emulators.cloudtasks.grpc_service import build_handler
from emulators.cloudtasks.http_api import build_http_server, serve_in_thread

DEFAULT_GRPC_WORKERS = 16


class _GrpcRunner(Protocol):
    port: int

    def stop(self, grace: float) -> None: ...


class _ThreadedGrpc:
    """The classic thread-pool gRPC server."""

    def __init__(self, handler: grpc.GenericRpcHandler, address: str, workers: int) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cloudtasks-grpc"),
            handlers=[handler],
            options=[("grpc.so_reuseport", 0)],
        )
        self.port = self._server.add_insecure_port(address)
        self._server.start()

    def stop(self, grace: float) -> None:
        self._server.stop(grace).wait(grace + 1.0)


class _AsyncGrpc:
    """A ``grpc.aio`` server on its own event-loop thread (fewer thread hand-offs per RPC)."""

    def __init__(self, handler: grpc.GenericRpcHandler, address: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="cloudtasks-grpc-aio", daemon=True
        )
        self._thread.start()

        async def start() -> tuple[grpc.aio.Server, int]:
            server = grpc.aio.server(handlers=[handler], options=[("grpc.so_reuseport", 0)])
            port = server.add_insecure_port(address)
            await server.start()
            return server, port

        try:
            self._server, self.port = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except BaseException:
            self._shutdown_loop()
            raise

    def _shutdown_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)
        self._loop.close()

    def stop(self, grace: float) -> None:
        future = asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop)
        future.result(timeout=grace + 5.0)
        self._shutdown_loop()


@dataclass
class EmulatorHandle:
    """A running emulator: where to reach it, direct state access, and ``stop()``."""

    host: str
    port: int
    http_port: int
    emulator: Emulator
    _grpc_server: _GrpcRunner
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
        self._grpc_server.stop(grace)
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
    dispatch_workers: int = 256,
    grpc_workers: int = DEFAULT_GRPC_WORKERS,
    grpc_asyncio: bool = True,
    log_stream: TextIO | None = sys.stdout,
) -> EmulatorHandle:
    """Start the emulator; port 0 picks a free port (read it from the handle).

    ``grpc_asyncio`` serves gRPC from a ``grpc.aio`` event loop (default, faster); False uses
    the thread-pool server with ``grpc_workers`` threads. ``log_stream=None`` disables the
    JSON log. The HTTP ``/healthz`` endpoint answers 200 only after gRPC is serving.
    """
    config = EmulatorConfig(
        tombstone_seconds=tombstone_seconds,
        queue_tombstone_seconds=queue_tombstone_seconds,
        min_dispatch_deadline=min_dispatch_deadline,
        dispatch_workers=dispatch_workers,
    )
    emulator = Emulator(config, log_stream)
    ready = threading.Event()
    try:
        http_server = build_http_server(host, http_port, emulator, ready.is_set)
    except OSError:
        emulator.stop()
        raise
    http_thread = serve_in_thread(http_server)
    address = f"{host}:{port}"
    grpc_server: _GrpcRunner
    try:
        if grpc_asyncio:
            grpc_server = _AsyncGrpc(build_handler(emulator, asynchronous=True), address)
        else:
            grpc_server = _ThreadedGrpc(build_handler(emulator), address, grpc_workers)
    except RuntimeError as exc:
        http_server.shutdown()
        http_server.server_close()
        emulator.stop()
        raise OSError(f"cannot bind gRPC port {address}: {exc}") from exc
    bound = grpc_server.port
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
