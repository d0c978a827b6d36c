"""Cloud Logging structured JSON logs: one JSON object per line on stdout.

Cloud Run / Cloud Functions gen2 parse each stdout line that is a JSON object; ``severity``,
``message``, ``time``, ``logging.googleapis.com/labels``, ``logging.googleapis.com/trace`` and
``logging.googleapis.com/spanId`` are special fields, everything else lands in ``jsonPayload``.

Library code only does ``logging.getLogger(__name__)`` and passes fields with ``extra=``;
:func:`log_context` adds fields (event id, subscription id, trace) to every line logged while a
message is handled, so use-case logs carry them without threading them through calls.
:func:`setup_logging` installs the formatter once; the handler calls it lazily.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, TextIO

# Cloud Logging's LogSeverity names; Python's levels map onto them.
_SEVERITY = {
    logging.DEBUG: "DEBUG",
    logging.INFO: "INFO",
    logging.WARNING: "WARNING",
    logging.ERROR: "ERROR",
    logging.CRITICAL: "CRITICAL",
}
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}", re.ASCII)
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d+))?(?:;o=\d)?", re.ASCII)
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
# Fields that become Cloud Logging labels (indexed, filterable) rather than payload.
LABEL_FIELDS = ("function", "topic", "event_id", "subscription_id")
_HANDLER_MARK = "_dispatcher_cloud_logging"

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "dispatcher_log_context", default=_EMPTY
)


def parse_trace(header: str | None) -> tuple[str, str | None] | None:
    """(trace id, span id) from a W3C ``traceparent`` or an ``X-Cloud-Trace-Context`` value."""
    if not header:
        return None
    header = header.strip()
    match = _TRACEPARENT.fullmatch(header)
    if match:
        return match.group(1), match.group(2)
    match = _CLOUD_TRACE.fullmatch(header)
    if match:
        span = match.group(2)
        # Cloud Logging wants the span as 16 hex digits; the legacy header gives it in decimal.
        span_hex = f"{int(span):016x}" if span and int(span) < 2**64 else None
        return match.group(1).lower(), span_hex
    return None


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line emitted inside the block (None values are skipped)."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def current_log_context() -> dict[str, Any]:
    """The fields :func:`log_context` currently adds (a copy)."""
    return dict(_context.get())


def bind_log_context(**fields: Any) -> None:
    """Add fields to the current :func:`log_context` block (e.g. once the payload is decoded)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


class CloudLoggingFormatter(logging.Formatter):
    """Format records as Cloud Logging structured JSON, one line each.

    Written to cost little more than the ``json`` encoding of the line itself (fanout writes two
    lines per message): one encoder reused for every line (``json.dumps`` with options builds a
    new one per call), the record's extra fields found by a set difference rather than a
    filtered walk over every attribute, and the timestamp's date and time formatted once per
    second.
    """

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project
        self._encoder = json.JSONEncoder(default=_json_default, ensure_ascii=True)
        self._second: tuple[int, str] = (-1, "")

    def _time(self, created: float) -> str:
        whole = int(created)
        second, text = self._second
        if second != whole:
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
            self._second = (whole, text)
        return f"{text}.{int((created - whole) * 1_000_000):06d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` (plus the active :func:`log_context`) as one JSON line."""
        attributes = record.__dict__
        fields: dict[str, Any] = dict(_context.get())
        for key in attributes.keys() - _RECORD_FIELDS:
            if key[:1] != "_":
                fields[key] = attributes[key]
        message = record.getMessage()
        entry: dict[str, Any] = {
            "severity": _SEVERITY.get(record.levelno, "DEFAULT"),
            "message": message,
            "time": self._time(record.created),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": str(record.lineno),
                "function": record.funcName,
            },
        }
        if record.exc_info:
            # Error Reporting picks up a stack trace that is part of the message.
            entry["message"] = f"{message}\n{''.join(traceback.format_exception(*record.exc_info))}"
        elif record.exc_text:
            entry["message"] = f"{message}\n{record.exc_text}"
        trace = parse_trace(fields.pop("trace", None))
        if trace is not None:
            trace_id, span_id = trace
            entry["logging.googleapis.com/trace"] = (
                f"projects/{self.project}/traces/{trace_id}" if self.project else trace_id
            )
            if span_id:
                entry["logging.googleapis.com/spanId"] = span_id
            entry["logging.googleapis.com/trace_sampled"] = True
        labels = {k: str(fields[k]) for k in LABEL_FIELDS if fields.get(k) is not None}
        if labels:
            entry["logging.googleapis.com/labels"] = labels
        for key in fields.keys() - entry.keys():
            entry[key] = fields[key]
        return self._encoder.encode(entry)


def setup_logging(
    level: str | int = "INFO", *, project: str | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Install the Cloud Logging formatter on the root logger; calling it again changes nothing.

    Returns the installed handler. functions-framework's plain-text stdout/stderr handlers are
    removed so each record is written once, as JSON.
    """
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, _HANDLER_MARK, False):
            return handler
    # Every record would otherwise look up the process id and the multiprocessing process name,
    # which no line of ours carries (Cloud Logging knows the instance).
    logging.logProcesses = False
    logging.logMultiprocessing = False
    for handler in list(root.handlers):
        # Exactly StreamHandler: functions-framework's plain-text ones. Subclasses (pytest's
        # capture handler, a file handler someone added on purpose) stay.
        if type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    # sys.__stdout__: functions-framework replaces sys.stdout with a wrapper that re-encodes
    # every write as its own JSON object, which would nest our JSON inside a string.
    target = stream or sys.__stdout__ or sys.stdout
    handler = logging.StreamHandler(target)
    handler.setFormatter(CloudLoggingFormatter(project))
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    return handler


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return value[:200].decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)
