"""The compiled checks (shared.schema_compiler) agree with jsonschema on every contract.

They only ever answer "valid" for jsonschema (an invalid verdict is re-checked by jsonschema),
so the property that matters is: compiled valid => jsonschema valid. It is checked on every
example and golden event, and on generated variants of them (fields removed, replaced by other
JSON values, extra fields added, strings stretched)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.contracts import CONTRACTS, _compile_pattern, format_checker, get_contract
from shared.schema_compiler import compile_schema

EVENTS = Path(__file__).resolve().parents[2] / "events"
# Contract file -> golden event directory.
GOLDEN = {f"{d.name}.v1.json": d for d in EVENTS.iterdir() if d.is_dir()}


def _samples(name: str) -> list[Any]:
    samples = list(get_contract(name).examples)
    directory = GOLDEN.get(name)
    if directory is not None:
        for path in sorted(directory.glob("*.json")):
            if path.name != "expected.json":
                samples.append(json.loads(path.read_text(encoding="utf-8")))
    return samples


def _agree(name: str, payload: Any) -> None:
    contract = get_contract(name)
    fast = contract.is_valid_fast(payload)
    slow = contract._validator.is_valid(payload)
    if fast is None:  # not compiled: jsonschema alone
        return
    if fast:
        assert slow, f"{name}: compiled checks accept what jsonschema refuses: {payload!r}"
    # Not required for safety, but a disagreement the other way would only waste time:
    assert fast == slow, f"{name}: compiled {fast}, jsonschema {slow}: {payload!r}"


# Checked once per message or task on the busy paths; the others may stay with jsonschema.
HOT = ("tick.v1.json", "due.v1.json", "collector-task.v1.json", "result.v1.json")


@pytest.mark.parametrize("name", HOT)
def test_the_contracts_on_the_busy_paths_are_compiled(name: str) -> None:
    assert get_contract(name).compiled


@pytest.mark.parametrize("name", CONTRACTS)
def test_examples_and_golden_events_get_the_same_verdict(name: str) -> None:
    for payload in _samples(name):
        _agree(name, payload)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
    | st.sampled_from(
        [
            "2026-01-05T09:00:00Z",
            "schedule",
            "manual",
            "acme-news",
            "Acme",
            "rss",
            "0 9 * * *",
            "Europe/Paris",
            "x\n",
            "",
            60,
            300.0,
            59,
            -1,
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out.extend(_paths(item, (*prefix, index)))
    return out


@st.composite
def _variants(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(CONTRACTS))
    payload = copy.deepcopy(draw(st.sampled_from(_samples(name))))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(payload)
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent: Any = payload
        for part in path[:-1]:
            parent = parent[part]
        key = path[-1]
        action = draw(st.sampled_from(["replace", "delete", "extra", "stretch"]))
        if action == "replace":
            parent[key] = draw(_JSON)
        elif action == "delete":
            del parent[key]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(_JSON)
        elif action == "stretch" and isinstance(parent[key], str):
            parent[key] = parent[key] * draw(st.integers(2, 60))
    return name, payload


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(_variants())
def test_generated_variants_get_the_same_verdict(case: tuple[str, Any]) -> None:
    _agree(*case)


def test_a_keyword_the_compiler_does_not_know_leaves_the_schema_to_jsonschema() -> None:
    schema = {"type": "object", "patternProperties": {"^x": {"type": "string"}}}
    assert (
        compile_schema(schema, pattern=_compile_pattern, format_ok=format_checker.conforms) is None
    )
    assert (
        compile_schema(
            {"$ref": "other.json#/x"}, pattern=_compile_pattern, format_ok=format_checker.conforms
        )
        is None
    )


def test_a_self_referring_schema_compiles_to_a_loop() -> None:
    schema = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"next": {"$ref": "#/$defs/node"}},
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    check = compile_schema(schema, pattern=_compile_pattern, format_ok=format_checker.conforms)
    assert check is not None
    assert check({"next": {"next": {}}})
    assert not check({"next": {"next": {"other": 1}}})
