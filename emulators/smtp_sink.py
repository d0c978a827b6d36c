"""A real SMTP server for the local stack that keeps every message it accepts (aiosmtpd).

It speaks SMTP on ``--port`` (plain, no TLS: the local stack sets ``tls = "none"``; production
talks STARTTLS to a real relay) and keeps, per accepted message, one JSON line in the record file
(received_at, envelope sender and recipients, Message-ID, Subject, size, the raw message) and
answers ``250 2.0.0 Ok: queued as <n>``. The record is flushed before the 250 goes out, so what
the sink claims to have accepted is on disk even if it is killed right after.

A small HTTP side (``--http-port``) lets tests and people see and steer it:

* ``GET /healthz``; ``GET /messages`` (the records); ``DELETE /messages`` (forget them);
* ``POST /control`` (every key optional; what is not given is kept):
  ``refuse_code`` (e.g. 451 or 550; 0 accepts again) with ``refuse_text``, for ``refuse_seconds``
  from now or for the next ``refuse_count`` messages (neither: until changed): the message's
  DATA is answered with that code and not recorded;
  ``delay_reply_seconds``: record the message, then wait that long before answering 250 -- the
  window in which a client that dies has sent an email it never heard accepted (the crash
  window of docs/deliveries.md).

Run: ``python -m emulators.smtp_sink --port 2525 --http-port 2526 --record-file sink.jsonl``.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import flask
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from werkzeug.serving import BaseWSGIServer, make_server

from emulators.recorder_http import ControlError, recorder_app

logger = logging.getLogger("emulators.smtp_sink")


@dataclass(frozen=True)
class SinkControls:
    """The sink's behaviour; replaced whole so one message sees one consistent plan."""

    refuse_code: int = 0
    refuse_text: str = ""
    # Monotonic deadline of a timed refusal; None: no deadline.
    refuse_until: float | None = None
    # Messages still to refuse; None: no count.
    refuse_remaining: int | None = None
    delay_reply_seconds: float = 0.0

    def refusing(self, now: float) -> bool:
        if not self.refuse_code:
            return False
        if self.refuse_until is not None and now >= self.refuse_until:
            return False
        return self.refuse_remaining is None or self.refuse_remaining > 0

    def as_dict(self, now: float) -> dict[str, Any]:
        data = asdict(self)
        data["refusing"] = self.refusing(now)
        data["refuse_seconds_left"] = (
            None if self.refuse_until is None else max(0.0, round(self.refuse_until - now, 3))
        )
        del data["refuse_until"]
        return data


def parse_controls(current: SinkControls, plan: Mapping[str, Any], now: float) -> SinkControls:
    """Apply ``plan`` (the ``POST /control`` body) to ``current``."""
    unknown = sorted(
        set(plan)
        - {"refuse_code", "refuse_text", "refuse_seconds", "refuse_count", "delay_reply_seconds"}
    )
    if unknown:
        raise ControlError(f"unknown control {unknown[0]!r}")
    changed = current
    if "refuse_code" in plan:
        code = plan["refuse_code"]
        if (
            isinstance(code, bool)
            or not isinstance(code, int)
            or not (code == 0 or 400 <= code < 600)
        ):
            raise ControlError("refuse_code must be 0 or an SMTP code 400..599")
        default_text = {4: "4.3.0 sink refusing for a while", 5: "5.7.1 sink refuses this message"}
        changed = replace(
            changed,
            refuse_code=code,
            refuse_text=str(plan.get("refuse_text") or default_text.get(code // 100, "")),
            refuse_until=None,
            refuse_remaining=None,
        )
    if "refuse_seconds" in plan:
        seconds = _number(plan["refuse_seconds"], "refuse_seconds")
        changed = replace(changed, refuse_until=now + seconds)
    if "refuse_count" in plan:
        count = plan["refuse_count"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ControlError("refuse_count must be a whole number >= 0")
        changed = replace(changed, refuse_remaining=count)
    if "delay_reply_seconds" in plan:
        changed = replace(
            changed, delay_reply_seconds=_number(plan["delay_reply_seconds"], "delay_reply_seconds")
        )
    return changed


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ControlError(f"{name} must be a number >= 0")
    return float(value)


class SinkState:
    """Records and controls, shared by the SMTP handler (asyncio thread) and the HTTP side."""

    def __init__(self, record_file: Path) -> None:
        self.record_file = record_file
        self.lock = threading.Lock()
        self.controls = SinkControls()
        self.records: list[dict[str, Any]] = []
        self.refused = 0
        record_file.parent.mkdir(parents=True, exist_ok=True)
        if record_file.exists():
            # A restarted sink keeps what it accepted before: the file is the sink's mailbox.
            lines = record_file.read_text(encoding="utf-8").splitlines()
            self.records = [json.loads(line) for line in lines if line.strip()]

    def decide(self) -> tuple[int, str] | None:
        """The refusal for the message now arriving, or ``None`` to accept it."""
        with self.lock:
            now = time.monotonic()
            controls = self.controls
            if not controls.refusing(now):
                return None
            if controls.refuse_remaining is not None:
                self.controls = replace(controls, refuse_remaining=controls.refuse_remaining - 1)
            self.refused += 1
            return controls.refuse_code, controls.refuse_text

    def record(self, envelope: Envelope) -> dict[str, Any]:
        raw = envelope.content if isinstance(envelope.content, bytes) else b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        with self.lock:
            entry = {
                "number": len(self.records) + 1,
                "received_at": datetime.now(UTC).isoformat(),
                "mail_from": envelope.mail_from,
                "rcpt_tos": list(envelope.rcpt_tos),
                "message_id": str(parsed.get("Message-ID", "")),
                "subject": str(parsed.get("Subject", "")),
                "size": len(raw),
                "raw": raw.decode("utf-8", errors="replace"),
            }
            with self.record_file.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")
                handle.flush()
            self.records.append(entry)
            return entry

    def clear(self) -> None:
        with self.lock:
            self.records = []
            self.refused = 0
            self.record_file.write_text("")

    def snapshot(self) -> list[dict[str, Any]]:
        """The messages accepted so far."""
        with self.lock:
            return list(self.records)

    def apply_controls(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a ``POST /control`` plan; the controls now in force."""
        now = time.monotonic()
        with self.lock:
            self.controls = parse_controls(self.controls, plan, now)
            return self.controls.as_dict(now)


class SinkHandler:
    """aiosmtpd handler: refuse as the controls say, or record and accept."""

    def __init__(self, state: SinkState) -> None:
        self.state = state

    async def handle_DATA(  # noqa: N802 - the name aiosmtpd calls
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        refusal = self.state.decide()
        if refusal is not None:
            code, text = refusal
            logger.info("refused a message with %s", code)
            return f"{code} {text}"
        entry = await asyncio.to_thread(self.state.record, envelope)
        delay = self.state.controls.delay_reply_seconds
        if delay:
            await asyncio.sleep(delay)
        return f"250 2.0.0 Ok: queued as {entry['number']}"


def make_app(state: SinkState) -> flask.Flask:
    """The HTTP side: health, messages, controls."""
    return recorder_app(
        "smtp-sink",
        "/messages",
        records=state.snapshot,
        clear=state.clear,
        apply_controls=state.apply_controls,
    )


@dataclass
class RunningSink:
    """A started sink: its SMTP controller and HTTP server (stop both with :meth:`stop`)."""

    state: SinkState
    controller: Controller
    http: BaseWSGIServer
    http_thread: threading.Thread

    def stop(self) -> None:
        self.http.shutdown()
        self.controller.stop()


def start(host: str, port: int, http_port: int, record_file: Path) -> RunningSink:
    """Start the SMTP server and its HTTP side in background threads; return when listening."""
    state = SinkState(record_file)
    controller = Controller(
        SinkHandler(state),
        hostname=host,
        port=port,
        # A client that dies mid-conversation must not hold the sink for five minutes.
        server_kwargs={"timeout": 30},
    )
    controller.start()
    http = make_server(host, http_port, make_app(state), threaded=True)
    thread = threading.Thread(target=http.serve_forever, name="smtp-sink-http", daemon=True)
    thread.start()
    return RunningSink(state, controller, http, thread)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="SMTP port")
    parser.add_argument("--http-port", type=int, required=True, help="control/inspection port")
    parser.add_argument("--record-file", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sink = start(args.host, args.port, args.http_port, args.record_file)
    print(
        f"smtp sink: smtp://{args.host}:{args.port} http://{args.host}:{args.http_port}",
        flush=True,
    )
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sink.stop()


if __name__ == "__main__":
    main()
