"""Structured JSON log lines (Cloud Logging's format: severity, message, plus fields).

Logging sits on the create and dispatch hot paths, so ``emit`` only encodes and queues the
line; a background thread writes the queued lines every ``flush_interval`` seconds in one
write, and ``close()`` writes what is left.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import deque
from typing import Any, TextIO

_LABELS = {"component": "cloudtasks-emulator"}
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False)


class _SecondCache:
    # One tuple, replaced atomically, so a reader never pairs a second with another's text.
    pair: tuple[int, str] = (-1, "")


def _timestamp(now: float) -> str:
    """RFC 3339 UTC with milliseconds; the formatted second is reused (strftime is slow)."""
    whole = int(now)
    second, text = _SecondCache.pair
    if second != whole:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _SecondCache.pair = (whole, text)
    return f"{text}.{int((now - whole) * 1000):03d}Z"


class JsonLog:
    """Writes one JSON object per line; a ``None`` stream disables logging (benchmarks)."""

    def __init__(self, stream: TextIO | None, flush_interval: float = 0.1) -> None:
        self._stream = stream
        # deque.append/popleft are atomic, so emitters never take a lock; with
        # PYTHONUNBUFFERED (set in our environments) a write per line would be a syscall each.
        self._pending: deque[str] = deque()
        self._lock = threading.Lock()
        self._closed = False
        self._interval = flush_interval
        if stream is not None:
            threading.Thread(
                target=self._flush_loop, name="cloudtasks-log-flush", daemon=True
            ).start()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def emit(self, event: str, message: str, severity: str = "INFO", **fields: Any) -> None:
        """Queue one line: ``{"severity", "message", "event", "time", labels, **fields}``."""
        if self._stream is None or self._closed:
            return
        record = {
            "severity": severity,
            "message": message,
            "event": event,
            "time": _timestamp(time.time()),
            "logging.googleapis.com/labels": _LABELS,
            **fields,
        }
        self._pending.append(_ENCODER.encode(record) + "\n")

    def _flush_loop(self) -> None:
        while not self._closed:
            time.sleep(self._interval)
            self._drain()

    def _drain(self) -> None:
        if self._stream is None:
            return
        with self._lock:
            parts: list[str] = []
            with contextlib.suppress(IndexError):
                while True:
                    parts.append(self._pending.popleft())
            if not parts:
                return
            with contextlib.suppress(ValueError):  # stream closed at interpreter shutdown
                self._stream.write("".join(parts))
                self._stream.flush()

    def close(self) -> None:
        """Write out everything emitted so far and stop the flusher (the stream stays open)."""
        self._closed = True
        self._drain()
