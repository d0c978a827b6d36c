"""``dispatcher schemas``: check a message against its contract before publishing it.

Examples::

    dispatcher schemas validate due message.json
    echo '{"subscription_id": "acme-news"}' | dispatcher schemas validate due -
    dispatcher schemas validate --topic dispatcher-ticks tick.json --json
    dispatcher schemas list
    dispatcher schemas check        # every schema is valid 2020-12 and its examples pass

The message goes through exactly the functions' decoding (UTF-8, JSON, size limit) and
validation, so "OK" here means the function will accept it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shared import contracts, topology
from shared.cli.common import CliError, console, print_json
from shared.config import ConfigError, get_settings
from shared.envelope import decode_json
from shared.errors import PayloadDecodeError, PayloadTooLargeError, ValidationIssue

app = typer.Typer(
    help="Message contracts (schemas/*.json): validate a message, list and check the schemas.",
    no_args_is_help=True,
)

_TOPIC_HELP = "Infer the contract from this topic in topics.yaml (then the only argument is FILE)."


@app.command("validate")
def validate_cmd(
    target: Annotated[
        str, typer.Argument(help="Contract name (tick, due, ...) or, with --topic, FILE.")
    ],
    file: Annotated[
        str | None, typer.Argument(help="The message: a JSON file, or - for stdin.")
    ] = None,
    topic: Annotated[str | None, typer.Option("--topic", "-t", help=_TOPIC_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
) -> None:
    """Validate one message; print OK or every violation (path, rule, value). Exit 0 or 1."""
    if topic is not None:
        if file is not None:
            raise CliError("with --topic give only FILE (or -), not a contract name")
        file, schema_name = target, _schema_for_topic(topic)
    else:
        if file is None:
            raise CliError("missing FILE (or - for stdin) after the contract name")
        schema_name = target
    try:
        contract = contracts.get_contract(schema_name)
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from exc

    data = _read(file)
    issues: list[ValidationIssue] = []
    decode_error: str | None = None
    limit = _max_payload_bytes()
    try:
        if limit is not None and len(data) > limit:
            raise PayloadTooLargeError(len(data), limit)
        payload = decode_json(data)
    except (PayloadDecodeError, PayloadTooLargeError) as exc:
        decode_error = f"{exc.reason_class}: {exc.message}"
    else:
        issues = contract.issues(payload)

    ok = decode_error is None and not issues
    if json_out:
        result: dict[str, Any] = {
            "valid": ok,
            "schema": contract.name,
            "schema_id": contract.id,
            "errors": [i.as_dict() for i in issues],
        }
        if decode_error:
            result["decode_error"] = decode_error
        print_json(result)
    elif ok:
        console.print(f"OK  {contract.name}", highlight=False)
    else:
        console.print(f"INVALID  {contract.name}", highlight=False)
        if decode_error:
            console.print(f"  {decode_error}", highlight=False, markup=False, soft_wrap=True)
        for issue in issues:
            console.print(
                f"  {issue.path}  [{issue.rule}]  {issue.message}\n"
                f"      value: {issue.value}\n      schema: {issue.schema_path}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    if not ok:
        raise typer.Exit(1)


@app.command("list")
def list_cmd(
    json_out: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
) -> None:
    """List the contracts with their $id and title."""
    rows = []
    for name in contracts.CONTRACTS:
        contract = contracts.get_contract(name)
        rows.append({"name": name, "id": contract.id, "title": contract.schema.get("title", "")})
    if json_out:
        print_json(rows)
        return
    for row in rows:
        console.print(f"{row['name']:<24} {row['title']}", highlight=False, markup=False)


@app.command("check")
def check_cmd() -> None:
    """Check every schema against the 2020-12 meta-schema and its own examples; exit 1 if not."""
    failures = 0
    for name in contracts.CONTRACTS:
        try:
            contract = contracts.get_contract(name)
        except Exception as exc:  # a broken file must be reported, not crash the loop
            console.print(f"FAIL  {name}: {exc}", highlight=False, markup=False)
            failures += 1
            continue
        bad = [(i, contract.issues(ex)) for i, ex in enumerate(contract.examples)]
        bad = [(i, found) for i, found in bad if found]
        if not contract.examples:
            console.print(f"FAIL  {name}: no examples", highlight=False, markup=False)
            failures += 1
        for index, found in bad:
            failures += 1
            first = found[0]
            console.print(
                f"FAIL  {name} example {index}: {first.path} [{first.rule}] {first.message}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        if contract.examples and not bad:
            console.print(f"OK    {name} ({len(contract.examples)} examples)", highlight=False)
    if failures:
        raise typer.Exit(1)


def _schema_for_topic(topic: str) -> str:
    try:
        return topology.load_topology().topic(topic).schema
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from exc


def _max_payload_bytes() -> int | None:
    # The functions refuse larger data; without a readable configuration there is no limit to
    # check, and validating the contract is still worth doing.
    try:
        return get_settings().max_payload_bytes
    except (ConfigError, OSError):
        return None


def _read(file: str) -> bytes:
    if file == "-":
        return sys.stdin.buffer.read()
    path = Path(file)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}") from exc
