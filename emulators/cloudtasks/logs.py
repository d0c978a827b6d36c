"""Structured JSON log lines (Cloud Logging's format: severity, message, plus fields)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any, TextIO


class JsonLog:
    """Writes one JSON object per line; a ``None`` stream disables logging (benchmarks)."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def emit(self, event: str, message: str, severity: str = "INFO", **fields: Any) -> None:
        """Write one line: ``{"severity", "message", "event", "time", **fields}``."""
        if self._stream is None:
            return
        record = {
            "severity": severity,
            "message": message,
            "event": event,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "logging.googleapis.com/labels": {"component": "cloudtasks-emulator"},
            **fields,
        }
        line = json.dumps(record, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            try:
                self._stream.write(line)
                self._stream.flush()
            except ValueError:
                # The stream was closed under us during interpreter shutdown.
                pass
