"""``dispatcher schemas validate FILE|-``: the operator's check before publishing by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared import contracts
from shared.cli.schemas_cmd import app
from tests.unit.contracts.conftest import EVENTS

runner = CliRunner()


def test_valid_file_prints_ok_and_exits_0() -> None:
    result = runner.invoke(app, ["validate", "due", str(EVENTS / "due" / "valid-minimal.json")])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("OK")


def test_stdin_with_violations_lists_path_rule_value() -> None:
    message = '{"subscription_id": "Acme News", "slot": "soon"}'
    result = runner.invoke(app, ["validate", "due", "-"], input=message)
    assert result.exit_code == 1
    assert "$.subscription_id  [pattern]" in result.output
    assert "$.slot  [format]" in result.output
    assert "value: 'Acme News'" in result.output


def test_json_output() -> None:
    result = runner.invoke(app, ["validate", "sync", "-", "--json"], input='{"all": false}')
    assert result.exit_code == 1
    out = json.loads(result.output)
    assert out["valid"] is False
    assert out["schema"] == "sync.v1.json"
    assert {"path", "rule", "value", "schema_path", "message"} <= set(out["errors"][0])


def test_topic_infers_the_contract() -> None:
    result = runner.invoke(
        app, ["validate", "--topic", "dispatcher-ticks", "-", "--json"], input="{}"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["schema"] == "tick.v1.json"


def test_not_json_is_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe")
    result = runner.invoke(app, ["validate", "tick", str(bad)])
    assert result.exit_code == 1
    assert "NotUtf8Error" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["validate", "nope", "-"],
        ["validate", "due"],
        ["validate", "--topic", "dispatcher-due", "due", "-"],
    ],
)
def test_usage_mistakes_exit_nonzero(args: list[str]) -> None:
    result = runner.invoke(app, args, input="{}")
    assert result.exit_code != 0


def test_check_passes_for_the_shipped_schemas() -> None:
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 0, result.output
    assert result.output.count("OK") == len(contracts.CONTRACTS)


def test_list_json() -> None:
    result = runner.invoke(app, ["list", "--json"])
    assert [row["name"] for row in json.loads(result.output)][:2] == ["tick.v1.json", "due.v1.json"]
