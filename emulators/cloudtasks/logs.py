"""Structured JSON log lines (Cloud Logging's format: severity, message, plus fields).

Logging sits on the create and dispatch hot paths, so lines are written to the stream without
a flush each; a background thread flushes at most ``flush_interval`` seconds after a write, and
``close()`` flushes what is left.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
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
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._closed = False
        self._interval = flush_interval
        self._flusher: threading.Thread | None = None
        if stream is not None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name="cloudtasks-log-flush", daemon=True
            )
            self._flusher.start()

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def emit(self, event: str, message: str, severity: str = "INFO", **fields: Any) -> None:
        """Write one line: ``{"severity", "message", "event", "time", labels, **fields}``."""
        if self._stream is None:
            return
        record = {
            "severity": severity,
            "message": message,
            "event": event,
            "time": _timestamp(time.time()),
            "logging.googleapis.com/labels": _LABELS,
            **fields,
        }
        line = _ENCODER.encode(record) + "\n"
        with self._lock:
            if self._closed:
                return
            try:
                self._stream.write(line)
            except ValueError:
                # The stream was closed under us during interpreter shutdown.
                return
        self._dirty.set()

    def _flush_loop(self) -> None:
        while not self._closed:
            self._dirty.wait()
            time.sleep(self._interval)
            self._dirty.clear()
            self._flush()

    def _flush(self) -> None:
        if self._stream is None:
            return
        with self._lock, contextlib.suppress(ValueError):
            self._stream.flush()

    def close(self) -> None:
        """Flush everything written so far and stop the flusher (the stream stays open)."""
        self._flush()
        self._closed = True
        self._dirty.set()
