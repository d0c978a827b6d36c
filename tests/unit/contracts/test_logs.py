"""Cloud Logging structured JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.logs import (
    CloudLoggingFormatter,
    current_log_context,
    log_context,
    parse_trace,
    setup_logging,
)

logger = logging.getLogger(__name__)


def _record(level: int, msg: str, **extra: object) -> logging.LogRecord:
    record = logger.makeRecord(logger.name, level, __file__, 10, msg, (), None, extra=extra)
    return record


def test_line_has_cloud_logging_fields() -> None:
    line = CloudLoggingFormatter("proj").format(
        _record(logging.WARNING, "hello", event_id="e1", subscription_id="acme", count=3)
    )
    entry = json.loads(line)
    assert "\n" not in line
    assert entry["severity"] == "WARNING"
    assert entry["message"] == "hello"
    assert entry["time"].endswith("Z")
    assert entry["logging.googleapis.com/labels"] == {"event_id": "e1", "subscription_id": "acme"}
    assert entry["count"] == 3
    assert entry["logging.googleapis.com/sourceLocation"]["line"] == "10"


def test_trace_from_traceparent() -> None:
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with log_context(trace=header):
        entry = json.loads(CloudLoggingFormatter("proj").format(_record(logging.INFO, "x")))
    assert entry["logging.googleapis.com/trace"] == (
        "projects/proj/traces/4bf92f3577b34da6a3ce929d0e0e4736"
    )
    assert entry["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert "trace" not in entry


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            "105445aa7843bc8bf206b12000100000/1;o=1",
            ("105445aa7843bc8bf206b12000100000", "0000000000000001"),
        ),
        ("105445AA7843BC8BF206B12000100000", ("105445aa7843bc8bf206b12000100000", None)),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_trace(header: str | None, expected: tuple[str, str | None] | None) -> None:
    assert parse_trace(header) == expected


def test_log_context_nests_and_unwinds() -> None:
    with log_context(event_id="1", topic=None):
        with log_context(subscription_id="acme"):
            assert current_log_context() == {"event_id": "1", "subscription_id": "acme"}
        assert current_log_context() == {"event_id": "1"}
    assert current_log_context() == {}


def test_exception_text_is_part_of_the_message() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "failed", (), __import__("sys").exc_info()
        )
    entry = json.loads(CloudLoggingFormatter().format(record))
    assert entry["severity"] == "ERROR"
    assert "ValueError: boom" in entry["message"]


def test_unserialisable_extra_does_not_break_the_line() -> None:
    entry = json.loads(
        CloudLoggingFormatter().format(_record(logging.INFO, "x", blob=b"\xff\x00", obj=object()))
    )
    assert entry["message"] == "x"
    assert isinstance(entry["obj"], str)


@pytest.fixture
def _clean_root() -> Iterator[None]:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before:
            root.removeHandler(handler)
    for handler in before:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.mark.usefixtures("_clean_root")
def test_setup_logging_is_idempotent_and_replaces_plain_stream_handlers() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_dispatcher_cloud_logging", False):
            root.removeHandler(handler)
    plain = logging.StreamHandler(io.StringIO())
    root.addHandler(plain)
    stream = io.StringIO()
    first = setup_logging("INFO", project="p", stream=stream)
    second = setup_logging("DEBUG", project="other", stream=io.StringIO())
    assert first is second
    assert plain not in root.handlers
    logging.getLogger("some.library").info("one line", extra={"event_id": "e"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["event_id"] == "e"
