"""The HTTP side the recording stand-ins share (the collector stub, the SMTP sink).

Each records what reaches it and lets tests steer it; both answer the same way:
``GET /healthz``, ``GET`` / ``DELETE`` of their records, and ``POST /control`` with a JSON object
whose keys change how they behave (a bad key or value is a 400 naming it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import flask

__all__ = ["ControlError", "json_response", "recorder_app"]


class ControlError(ValueError):
    """A ``POST /control`` body the stand-in cannot follow."""


def json_response(status: int, payload: Any) -> flask.Response:
    """``payload`` as a JSON response with ``status``."""
    return flask.Response(json.dumps(payload), status=status, mimetype="application/json")


def recorder_app(
    name: str,
    records_path: str,
    *,
    records: Callable[[], list[dict[str, Any]]],
    clear: Callable[[], None],
    apply_controls: Callable[[dict[str, Any]], dict[str, Any]],
) -> flask.Flask:
    """A Flask app with the shared routes; ``apply_controls`` takes a control plan and answers
    the controls now in force, or raises :class:`ControlError`."""
    app = flask.Flask(name)

    @app.get("/healthz")
    def healthz() -> flask.Response:
        return json_response(200, {"status": "ok"})

    @app.get(records_path)
    def list_records() -> flask.Response:
        return json_response(200, records())

    @app.delete(records_path)
    def clear_records() -> flask.Response:
        clear()
        return json_response(200, {"cleared": True})

    @app.post("/control")
    def control() -> flask.Response:
        plan = flask.request.get_json(force=True, silent=True)
        if not isinstance(plan, dict):
            return json_response(400, {"error": "send a JSON object"})
        try:
            return json_response(200, apply_controls(plan))
        except ControlError as exc:
            return json_response(400, {"error": str(exc)})

    return app
