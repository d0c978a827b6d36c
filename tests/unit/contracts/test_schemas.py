"""The contracts themselves: well-formed, versioned, closed on purpose, and the golden events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from shared import contracts
from shared.errors import SchemaValidationError
from tests.unit.contracts.conftest import EVENTS, TOPIC_SCHEMAS

CONTRACT_DIRS = {name.split(".v")[0]: name for name in contracts.CONTRACTS}


def _goldens() -> list[tuple[str, str]]:
    return [
        (directory, path.name)
        for directory in sorted(CONTRACT_DIRS)
        for path in sorted((EVENTS / directory).glob("*.json"))
        if path.name != "expected.json"
    ]


def _schema(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((contracts.schemas_dir() / name).read_text())
    return result


def test_every_schema_file_is_a_known_contract_and_back() -> None:
    on_disk = sorted(p.name for p in contracts.schemas_dir().glob("*.json"))
    assert on_disk == sorted(contracts.CONTRACTS)


@pytest.mark.parametrize("name", contracts.CONTRACTS)
def test_schema_is_2020_12_with_versioned_id_and_examples(name: str) -> None:
    schema = _schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + name), "the $id carries the file name and its version"
    assert ".v1." in schema["$id"]
    assert schema["examples"], "examples live inside the schema"
    for example in schema["examples"]:
        assert contracts.get_contract(name).issues(example) == []


@pytest.mark.parametrize("name", contracts.CONTRACTS)
def test_additional_properties_is_decided_at_the_top(name: str) -> None:
    schema = _schema(name)
    branches = schema.get("oneOf", [])
    decided = (
        "additionalProperties" in schema
        or "unevaluatedProperties" in schema
        or (branches and all("additionalProperties" in b for b in branches))
    )
    assert decided, f"{name} leaves additionalProperties to the default"


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("tick", {}),
        ("due", {"subscription_id": "acme-news"}),
        ("maintenance", {"job": "expire"}),
        ("sync", {"all": True}),
    ],
)
def test_minimal_hand_typed_messages_are_valid(name: str, payload: Any) -> None:
    contracts.validate(name, payload)


def test_every_contract_has_goldens() -> None:
    for directory in CONTRACT_DIRS:
        names = {p.name for p in (EVENTS / directory).glob("*.json")}
        assert {"valid-minimal.json", "valid-full.json", "expected.json"} <= names, directory
        assert len([n for n in names if n.startswith("invalid-")]) >= 3, directory


@pytest.mark.parametrize(("directory", "file"), _goldens())
def test_golden_event(directory: str, file: str) -> None:
    contract = contracts.get_contract(CONTRACT_DIRS[directory])
    payload = json.loads((EVENTS / directory / file).read_text(encoding="utf-8"))
    if file.startswith("valid-"):
        assert contract.issues(payload) == []
        return
    expected = json.loads((EVENTS / directory / "expected.json").read_text())[file]
    with pytest.raises(SchemaValidationError) as caught:
        contract.validate(payload)
    error = caught.value
    assert (error.path, error.rule) == (expected["path"], expected["rule"])
    assert error.schema_path.startswith(CONTRACT_DIRS[directory] + "#/")
    assert error.value, "the offending value is reported"
    assert len(error.value) <= 200


def test_expected_sidecars_name_existing_files() -> None:
    for directory in CONTRACT_DIRS:
        expected = json.loads((EVENTS / directory / "expected.json").read_text())
        invalid = {p.name for p in (EVENTS / directory).glob("invalid-*.json")}
        assert set(expected) == invalid, directory


def test_trailing_newline_is_not_accepted_by_a_dollar_anchor() -> None:
    # Python's "$" matches before a final newline; the contracts follow ECMA-262 instead.
    with pytest.raises(SchemaValidationError) as caught:
        contracts.validate("due", {"subscription_id": "acme\n"})
    assert caught.value.rule == "pattern"


def test_offending_value_is_shortened() -> None:
    with pytest.raises(SchemaValidationError) as caught:
        contracts.validate("due", {"subscription_id": "x" * 5000})
    assert caught.value.rule == "maxLength"
    assert len(caught.value.value) <= 200
    assert caught.value.value.endswith("…")


@pytest.mark.parametrize(
    "value",
    ["2026-01-05T09:00:00Z", "2026-01-05t09:00:00.123456789+05:30", "2026-01-05T09:00:00-00:00"],
)
def test_date_time_format_accepts_rfc3339(value: str) -> None:
    contracts.validate("tick", {"time": value})


@pytest.mark.parametrize(
    "value",
    [
        "2026-01-05 09:00:00Z",
        "2026-01-05T09:00:00",
        "2026-02-30T09:00:00Z",
        "2026-01-05T25:00:00Z",
        "2026-01-05T09:00:00+24:00",
        "\uff12\uff10\uff12\uff16-01-05T09:00:00Z"  # full-width digits,
        "2026-01-05T09:00:00Z\n",
    ],
)
def test_date_time_format_rejects_the_rest(value: str) -> None:
    with pytest.raises(SchemaValidationError) as caught:
        contracts.validate("tick", {"time": value})
    assert (caught.value.path, caught.value.rule) == ("$.time", "format")


def test_resolve_name_accepts_short_forms() -> None:
    assert contracts.resolve_name("due") == "due.v1.json"
    assert contracts.resolve_name("collector-task.v1") == "collector-task.v1.json"
    with pytest.raises(KeyError):
        contracts.resolve_name("nope")


def test_topics_yaml_names_the_schemas_the_functions_expect() -> None:
    topology = pytest.importorskip("shared.topology")
    loaded = topology.load_topology()
    for topic, (function, schema) in TOPIC_SCHEMAS.items():
        spec = loaded.topic(topic)
        assert (spec.push.function, spec.schema) == (function, schema)
        assert spec.dead_letter_topic == f"{topic}-dlq"


def test_schemas_dir_is_the_repository_folder() -> None:
    assert contracts.schemas_dir() == Path(__file__).resolve().parents[3] / "schemas"


def test_subscription_model_and_schema_agree_on_the_goldens() -> None:
    # Two implementations of one contract (shared/subscription.py parses documents in code);
    # the goldens keep them from drifting apart.
    model = pytest.importorskip("shared.subscription")
    contract = contracts.get_contract("subscription")
    directory = EVENTS / "subscription"
    for path in sorted(directory.glob("valid-*.json")):
        parsed = model.Subscription.from_document("acme-news", json.loads(path.read_text()))
        assert contract.issues(parsed.to_document(json_compatible=True)) == [], path.name
    expected = json.loads((directory / "expected.json").read_text())
    for name, where in expected.items():
        if name == "invalid-missing-system-fields.json":
            continue  # the model also parses user input, where the system fields are not set yet
        with pytest.raises(model.InvalidSubscription) as caught:
            model.Subscription.from_document(
                "acme-news", json.loads((directory / name).read_text())
            )
        assert caught.value.path == where["path"].removeprefix("$").removeprefix("."), name
