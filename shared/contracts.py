"""The message contracts in ``schemas/`` (JSON Schema 2020-12) and their validation.

``validate("due.v1.json", payload)`` returns nothing or raises
:class:`~shared.errors.SchemaValidationError` carrying the JSON path, the failing rule, the schema
location and the shortened offending value of the most relevant violation, plus every violation in
``issues``. Rules JSON Schema cannot express (unique source ids, ends_at after starts_at, unique
delivery ids and recipients, the collector task repeating its dispatch key consistently) are
checked after the schema, reported the same way with rule ``x-consistency``.

Formats are asserted, not just annotated: ``date-time`` (RFC 3339 with an offset), and the
project's own ``iana-time-zone`` and ``cron``. ``pattern`` follows ECMA-262, where ``$`` matches
only at the very end: Python's ``$`` also matches before a final newline, which would let
``"acme\\n"`` through as a subscription id.
"""

from __future__ import annotations

import functools
import json
import os
import re
import zoneinfo
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cronsim import CronSim, CronSimError
from jsonschema import Draft202012Validator, FormatChecker, validators
from jsonschema.exceptions import ValidationError, best_match, relevance

from shared.envelope import parse_rfc3339
from shared.errors import SchemaValidationError, ValidationIssue, preview
from shared.paths import HOME_ENV, project_root
from shared.schema_compiler import compile_schema

#: The contract files, by the name topics.yaml and the CLI use.
CONTRACTS = (
    "tick.v1.json",
    "due.v1.json",
    "maintenance.v1.json",
    "sync.v1.json",
    "collector-task.v1.json",
    "dead-letter.v1.json",
    "subscription.v1.json",
    "result.v1.json",
    "run-completed.v1.json",
    "email-task.v1.json",
)
CONSISTENCY_RULE = "x-consistency"
_MAX_ISSUES = 50


def schemas_dir() -> Path:
    """The directory holding the schema files (``<project root>/schemas``)."""
    return project_root() / "schemas"


def resolve_name(name: str) -> str:
    """Accept ``due``, ``due.v1`` or ``due.v1.json``; return the file name."""
    candidate = name if name.endswith(".json") else f"{name}.json"
    if candidate in CONTRACTS:
        return candidate
    matches = [c for c in CONTRACTS if c.startswith(f"{name}.v")]
    if len(matches) == 1:
        return matches[0]
    raise KeyError(f"unknown contract {name!r}; known: {', '.join(CONTRACTS)}")


# --- formats -------------------------------------------------------------------------------

format_checker = FormatChecker(formats=())


@format_checker.checks("date-time", raises=ValueError)
def _is_date_time(instance: object) -> bool:
    if isinstance(instance, str):
        parse_rfc3339(instance)
    return True


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@format_checker.checks("iana-time-zone")
def _is_time_zone(instance: object) -> bool:
    # Membership in the tz database rather than ZoneInfo(name): no file lookups driven by input.
    return not isinstance(instance, str) or instance in _time_zones()


@format_checker.checks("cron", raises=ValueError)
def _is_cron(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if len(instance.split()) != 5:
        raise ValueError("a cron expression has 5 fields: minute hour day-of-month month weekday")
    try:
        CronSim(instance, datetime(2000, 1, 1, tzinfo=UTC))
    except CronSimError as exc:
        raise ValueError(str(exc)) from exc
    return True


@format_checker.checks("email-address", raises=ValueError)
def _is_email_address(instance: object) -> bool:
    # A format rather than a pattern so that the refusal reads as a reason, not as a regex.
    from shared.subscription import EMAIL, MAX_EMAIL_LENGTH

    if not isinstance(instance, str):
        return True
    if len(instance) > MAX_EMAIL_LENGTH or not EMAIL.match(instance):
        raise ValueError("not a bare email address (name@domain, no display name or line break)")
    return True


# --- ECMA-262 pattern semantics ------------------------------------------------------------


@functools.cache
def _compile_pattern(pattern: str) -> re.Pattern[str]:
    # ECMA "$" (no multiline flag) is Python "\Z"; rewrite an unescaped trailing "$" only,
    # which is the form every schema in this project uses.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(
    validator: Any, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _compile_pattern(pattern).search(instance):
        yield ValidationError(f"{preview(instance, 80)} does not match {pattern!r}")


_Validator: Any = validators.extend(  # type: ignore[no-untyped-call]
    Draft202012Validator, {"pattern": _pattern}
)


# --- loading -------------------------------------------------------------------------------


class Contract:
    """One schema file with its compiled validator."""

    def __init__(self, name: str, schema: Mapping[str, Any]) -> None:
        Draft202012Validator.check_schema(schema)
        self.name = name
        self.schema = schema
        self.id = str(schema.get("$id", name))
        self._validator = _Validator(schema, format_checker=format_checker)
        # The fast yes (shared.schema_compiler); jsonschema answers everything else.
        self._fast = compile_schema(
            schema, pattern=_compile_pattern, format_ok=format_checker.conforms
        )

    @property
    def examples(self) -> list[Any]:
        """The ``examples`` the schema carries (all must be valid)."""
        return list(self.schema.get("examples", []))

    @property
    def compiled(self) -> bool:
        """Whether valid payloads are recognised by the compiled checks (the fast path)."""
        return self._fast is not None

    def is_valid_fast(self, payload: Any) -> bool | None:
        """The compiled checks' answer: True (valid), False, or None (not compiled)."""
        if self._fast is None:
            return None
        try:
            return self._fast(payload)
        except Exception:  # an input the checks did not foresee: let jsonschema judge
            return False

    def issues(self, payload: Any) -> list[ValidationIssue]:
        """Every violation, most relevant first (empty when the payload is valid)."""
        if self.is_valid_fast(payload):
            check = _CONSISTENCY_CHECKS.get(self.name)
            return [] if check is None else check(payload)
        errors = list(self._validator.iter_errors(payload))
        # A property that failed its own rule is also "unevaluated" (failed subschemas evaluate
        # nothing); report the cause, not that echo.
        causes = [e for e in errors if e.validator != "unevaluatedProperties"]
        errors = causes or errors
        found: list[ValidationIssue] = []
        if errors:
            best = best_match(errors)
            ordered = [best, *sorted((e for e in errors if e is not best), key=relevance)]
            found.extend(self._issue(e) for e in ordered[:_MAX_ISSUES])
        else:
            check = _CONSISTENCY_CHECKS.get(self.name)
            if check is not None:
                found.extend(check(payload))
        return found

    def validate(self, payload: Any) -> None:
        """Raise :class:`SchemaValidationError` unless ``payload`` satisfies the contract."""
        found = self.issues(payload)
        if not found:
            return
        first = found[0]
        extra = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise SchemaValidationError(
            f"{self.name}: {first.path}: {first.message}{extra}",
            schema=self.name,
            path=first.path,
            rule=first.rule,
            schema_path=first.schema_path,
            value=first.value,
            issues=tuple(found),
        )

    def _issue(self, error: ValidationError) -> ValidationIssue:
        # For oneOf/anyOf failures the nested error under the best branch is the useful one.
        leaf = best_match(error.context) if error.context else None
        chosen = leaf if leaf is not None and error.validator in ("oneOf", "anyOf") else error
        return ValidationIssue(
            path=json_path(chosen.absolute_path),
            rule=str(chosen.validator),
            schema_path=f"{self.name}#/" + "/".join(str(p) for p in chosen.absolute_schema_path),
            value=preview(chosen.instance),
            message=_short_message(
                f"{chosen.message}: {chosen.cause}" if chosen.cause else chosen.message
            ),
        )


def json_path(parts: Iterable[str | int]) -> str:
    """``["sources", 0, "id"]`` → ``$.sources[0].id`` (odd keys quoted: ``$['a b']``)."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}"
        else:
            out += "[" + json.dumps(part) + "]"
    return out


def _short_message(message: str) -> str:
    return message if len(message) <= 300 else message[:299] + "…"


@functools.cache
def _load(directory: Path, name: str) -> Contract:
    path = directory / name
    with path.open(encoding="utf-8") as handle:
        return Contract(name, json.load(handle))


def get_contract(name: str, directory: Path | None = None) -> Contract:
    """The compiled contract ``name`` (``due``, ``due.v1`` or ``due.v1.json``), cached."""
    if directory is None:
        # The hot path (every message in, every task body out): one dict lookup instead of
        # building and hashing the schemas path each time. Keyed by DISPATCHER_HOME too, which
        # is what schemas_dir() depends on.
        key = (os.environ.get(HOME_ENV), name)
        found = _DEFAULT_DIRECTORY.get(key)
        if found is None:
            found = _DEFAULT_DIRECTORY[key] = _load(schemas_dir(), resolve_name(name))
        return found
    return _load(directory, resolve_name(name))


# (DISPATCHER_HOME, name as asked) -> contract, for get_contract without a directory.
_DEFAULT_DIRECTORY: dict[tuple[str | None, str], Contract] = {}


def validate(name: str, payload: Any, directory: Path | None = None) -> None:
    """Validate ``payload`` against contract ``name``; raise ``SchemaValidationError`` if not."""
    get_contract(name, directory).validate(payload)


# --- consistency rules beyond JSON Schema --------------------------------------------------


def _consistency(path: str, value: Any, message: str, schema: str) -> ValidationIssue:
    return ValidationIssue(
        path=path,
        rule=CONSISTENCY_RULE,
        schema_path=f"{schema}#/$comment",
        value=preview(value),
        message=message,
    )


def _subscription_checks(doc: Any) -> list[ValidationIssue]:
    found: list[ValidationIssue] = []
    seen: set[str] = set()
    for index, source in enumerate(doc["sources"]):
        if source["id"] in seen:
            found.append(
                _consistency(
                    f"$.sources[{index}].id",
                    source["id"],
                    "duplicate source id",
                    "subscription.v1.json",
                )
            )
        seen.add(source["id"])
    # Delivery ids are part of every delivery key: two deliveries under one id would share keys
    # and one of them would never send.
    delivery_ids: set[str] = set()
    for index, delivery in enumerate(doc.get("deliveries", [])):
        if delivery["id"] in delivery_ids:
            found.append(
                _consistency(
                    f"$.deliveries[{index}].id",
                    delivery["id"],
                    "duplicate delivery id",
                    "subscription.v1.json",
                )
            )
        delivery_ids.add(delivery["id"])
        # Addresses are case-insensitive in practice: "A@x" and "a@x" would be two recipients
        # (two keys) and the person would get the email twice.
        lowered: set[str] = set()
        for position, address in enumerate(delivery["to"]):
            if address.lower() in lowered:
                found.append(
                    _consistency(
                        f"$.deliveries[{index}].to[{position}]",
                        address,
                        "duplicate recipient (addresses compare case-insensitively)",
                        "subscription.v1.json",
                    )
                )
            lowered.add(address.lower())
    if (
        "starts_at" in doc
        and "ends_at" in doc
        and (parse_rfc3339(doc["ends_at"]) <= parse_rfc3339(doc["starts_at"]))
    ):
        found.append(
            _consistency(
                "$.ends_at",
                doc["ends_at"],
                "ends_at must be after starts_at",
                "subscription.v1.json",
            )
        )
    return found


def _collector_task_checks(body: Any) -> list[ValidationIssue]:
    key = body["dispatch_key"]
    found: list[ValidationIssue] = []
    pairs = (
        ("$.slot", body["slot"], key["slot"], "slot differs from dispatch_key.slot"),
        ("$.source.id", body["source"]["id"], key["source_id"], "differs from dispatch_key"),
        (
            "$.subscription.id",
            body["subscription"]["id"],
            key["subscription_id"],
            "differs from dispatch_key",
        ),
    )
    for path, value, expected, message in pairs:
        if path == "$.slot":
            same = parse_rfc3339(value) == parse_rfc3339(expected)
        else:
            same = value == expected
        if not same:
            found.append(_consistency(path, value, message, "collector-task.v1.json"))
    return found


_CONSISTENCY_CHECKS: dict[str, Callable[[Any], list[ValidationIssue]]] = {
    "subscription.v1.json": _subscription_checks,
    "collector-task.v1.json": _collector_task_checks,
}

__all__ = [
    "CONTRACTS",
    "Contract",
    "format_checker",
    "get_contract",
    "json_path",
    "resolve_name",
    "schemas_dir",
    "validate",
]
