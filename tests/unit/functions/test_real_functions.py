"""The real functions/<name>/main.py, driven through functions-framework's test client.

Golden events in the real push encoding go through each function's actual wiring (topic,
contract and dead-letter topic resolved from topics.yaml and app.toml, not test routes). The
use case and the dead-letter publisher are replaced by recorders before the function module
is loaded, so no emulator is needed; tests/e2e drives the same functions against real ones.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import functions_framework
import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import handler
from shared.envelope import PushMessage
from shared.topology import load_topology
from tests.unit.contracts.conftest import EVENTS, push_body
from tests.unit.contracts.recorder import DEAD_LETTERS

ROOT = Path(__file__).resolve().parents[3]
# function -> (module main.py takes its use case from, its name, golden contract directory);
# select, fanout and results take theirs from the composition root (shared.wiring).
FUNCTIONS = {
    "select": ("shared.wiring", "select", "tick"),
    "fanout": ("shared.wiring", "fanout", "due"),
    "maintenance": ("shared.usecases.maintenance", "run_maintenance", "maintenance"),
    "sync": ("shared.usecases.sync", "sync_subscriptions", "sync"),
    "results": ("shared.wiring", "record_result", "result"),
    "plan-deliveries": ("shared.usecases.plan_deliveries", "plan_deliveries", "run-completed"),
}


class Calls:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    def use_case(self, payload: dict[str, Any], message: PushMessage) -> None:
        self.payloads.append(payload)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    recorder = Calls()
    for module, name, _ in FUNCTIONS.values():
        monkeypatch.setattr(f"{module}.{name}", recorder.use_case)
    handler.set_dead_letter_publisher(DEAD_LETTERS)
    handler.set_route_resolver(None)
    DEAD_LETTERS.reset()
    yield recorder
    handler.set_dead_letter_publisher(None)


def _client(function: str) -> FlaskClient:
    # Loaded after the use cases were patched: main.py binds the recorder at import.
    source = ROOT / "functions" / function / "main.py"
    create_app: Callable[[str, str], Flask] = functions_framework.create_app
    return create_app("handle", str(source)).test_client()


def _goldens() -> list[tuple[str, str]]:
    return [
        (function, path.name)
        for function, (_, _, contract) in FUNCTIONS.items()
        for path in sorted((EVENTS / contract).glob("*.json"))
        if path.name != "expected.json"
    ]


@pytest.mark.parametrize(("function", "file"), _goldens())
def test_golden_events_through_the_real_function(function: str, file: str, calls: Calls) -> None:
    contract = FUNCTIONS[function][2]
    raw = (EVENTS / contract / file).read_bytes()
    response = _client(function).post("/", json=push_body(raw, message_id="golden-1"))
    assert response.status_code == 200, response.get_data(as_text=True)
    topic = load_topology().for_function(function)
    if file.startswith("valid-"):
        assert calls.payloads == [json.loads(raw)]
        assert DEAD_LETTERS.published == []
        return
    expected = json.loads((EVENTS / contract / "expected.json").read_text())[file]
    assert calls.payloads == []
    [letter] = DEAD_LETTERS.published
    assert letter.topic == topic.dead_letter_topic
    assert letter.data == raw
    assert letter.attributes["dlq_source_topic"] == topic.name
    assert letter.attributes["dlq_source_message_id"] == "golden-1"
    assert letter.attributes["dlq_function"] == function
    assert letter.attributes.get("dlq_path") == expected["path"]
    assert letter.attributes.get("dlq_rule") == expected["rule"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    function=st.sampled_from(sorted(FUNCTIONS)),
    data=st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
        max_leaves=10,
    ).map(lambda value: json.dumps(value).encode()),
)
def test_any_data_is_processed_or_dead_lettered_never_lost(
    function: str, data: bytes, calls: Calls
) -> None:
    before_calls, before_letters = len(calls.payloads), len(DEAD_LETTERS.published)
    response = _client(function).post("/", json=push_body(data))
    assert response.status_code == 200
    processed = len(calls.payloads) - before_calls
    dead_lettered = len(DEAD_LETTERS.published) - before_letters
    assert processed + dead_lettered == 1, "acked without being processed or dead-lettered"
    if dead_lettered:
        letter = DEAD_LETTERS.published[-1]
        assert letter.data == data and letter.attributes["dlq_reason"]
