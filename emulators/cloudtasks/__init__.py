"""A faithful Cloud Tasks v2 emulator (gRPC), see README.md in this directory."""

from __future__ import annotations

from emulators.cloudtasks.core import AttemptRecord, Emulator, EmulatorConfig
from emulators.cloudtasks.queue_config import RetryPolicy
from emulators.cloudtasks.server import EmulatorHandle, start_server

__all__ = [
    "AttemptRecord",
    "Emulator",
    "EmulatorConfig",
    "EmulatorHandle",
    "RetryPolicy",
    "start_server",
]
