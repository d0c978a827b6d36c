"""A contract's schema compiled once into plain Python checks: the fast answer to "is it valid?".

:mod:`jsonschema` walks the schema for every payload (a validator object per subschema, the
``$ref`` resolver, generic keyword dispatch): profiled under load, checking one due message
and its two collector task bodies cost fanout about as much CPU as all its ledger calls. The
contracts use a small, fixed set of keywords, so each schema is translated once into nested
closures that test a payload with the same semantics, and only the answer "valid" is taken
from them: anything they find invalid is checked again by :mod:`jsonschema`, which stays the
authority for what is wrong and where (:class:`~shared.errors.SchemaValidationError`).

A schema using a keyword this module does not know is not compiled at all (:func:`compile_schema`
returns ``None``) and is validated by :mod:`jsonschema` alone. ``tests/unit/contracts`` checks
that both agree on every example, golden event and thousands of generated variants.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sized
from typing import Any

__all__ = ["Check", "NotCompilable", "compile_schema"]

Check = Callable[[Any], bool]
# Builds the check of one keyword from (compiler, the keyword's value, the whole schema).
_Builder = Callable[["_Compiler", Any, Mapping[str, Any]], Check]

# Keywords that only annotate: they never make a payload invalid.
_ANNOTATIONS = frozenset(
    {"$comment", "$id", "$schema", "$defs", "title", "description", "default", "examples"}
)


class NotCompilable(Exception):  # noqa: N818 - a verdict, not a failure
    """The schema uses something this compiler does not translate."""


def compile_schema(
    schema: Mapping[str, Any],
    *,
    pattern: Callable[[str], re.Pattern[str]],
    format_ok: Callable[[Any, str], bool],
) -> Check | None:
    """``schema`` (2020-12) as one function ``payload -> valid?``, or ``None`` if it uses a
    keyword not translated here. ``pattern`` compiles a ``pattern`` keyword with the
    contracts' ECMA semantics, ``format_ok(value, format)`` asserts a format."""
    try:
        return _Compiler(schema, pattern, format_ok).compile(schema)
    except NotCompilable:
        return None


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _multiple_of(value: Any, divisor: int | float) -> bool:
    # jsonschema's rule, so that floats agree with it too.
    if isinstance(divisor, float) or isinstance(value, float):
        quotient = value / divisor
        try:
            return bool(int(quotient) == quotient)
        except OverflowError:
            return False
    return bool(value % divisor == 0)


class _Compiler:
    def __init__(
        self,
        root: Mapping[str, Any],
        pattern: Callable[[str], re.Pattern[str]],
        format_ok: Callable[[Any, str], bool],
    ) -> None:
        self.root = root
        self.pattern = pattern
        self.format_ok = format_ok
        self.refs: dict[str, Check] = {}

    def compile(self, schema: Any) -> Check:
        if schema is True:
            return lambda _: True
        if schema is False:
            return lambda _: False
        if not isinstance(schema, Mapping):
            raise NotCompilable(f"schema {schema!r}")
        unknown = set(schema) - _ANNOTATIONS - _KEYWORDS
        if unknown:
            raise NotCompilable(f"keywords {sorted(unknown)}")
        checks: list[Check] = []
        for keyword in _ORDER:
            if keyword in schema:
                checks.append(_KEYWORD_COMPILERS[keyword](self, schema[keyword], schema))
        checks = [c for c in checks if c is not _ALWAYS]
        if not checks:
            return _ALWAYS
        if len(checks) == 1:
            return checks[0]
        return lambda value: all(check(value) for check in checks)

    def ref(self, target: str) -> Check:
        if not target.startswith("#/"):
            raise NotCompilable(f"$ref {target!r}")
        if target not in self.refs:
            node: Any = self.root
            for raw in target[2:].split("/"):
                part = raw.replace("~1", "/").replace("~0", "~")
                if not isinstance(node, Mapping) or part not in node:
                    raise NotCompilable(f"$ref {target!r}")
                node = node[part]
            # A placeholder first: a schema referring to itself compiles to a loop, not forever.
            slot: list[Check] = []
            self.refs[target] = lambda value: slot[0](value)  # noqa: PLW0108 - slot fills later
            slot.append(self.compile(node))
            self.refs[target] = slot[0]
        return self.refs[target]


def _always(_: Any) -> bool:
    return True


_ALWAYS: Check = _always


def _type(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    names = value if isinstance(value, list) else [value]
    try:
        tests = [_TYPES[n] for n in names]
    except (KeyError, TypeError) as exc:
        raise NotCompilable(f"type {value!r}") from exc
    if len(tests) == 1:
        return tests[0]
    return lambda v: any(t(v) for t in tests)


def _enum(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    # Strings only: jsonschema's equality tells 1 from True and 1.0 from 1, plain `in` does not.
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise NotCompilable(f"enum {value!r}")
    allowed = frozenset(value)
    return lambda v: isinstance(v, str) and v in allowed


def _const(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    if not isinstance(value, str):
        raise NotCompilable(f"const {value!r}")
    return lambda v: isinstance(v, str) and v == value


def _bound(
    test: Callable[[Any, Any], bool],
) -> Callable[[_Compiler, Any, Mapping[str, Any]], Check]:
    def build(c: _Compiler, limit: Any, _: Mapping[str, Any]) -> Check:
        if not _is_number(limit):
            raise NotCompilable(f"bound {limit!r}")
        return lambda v: not _is_number(v) or test(v, limit)

    return build


def _multiple(c: _Compiler, divisor: Any, _: Mapping[str, Any]) -> Check:
    if not _is_number(divisor) or divisor <= 0:
        raise NotCompilable(f"multipleOf {divisor!r}")
    return lambda v: not _is_number(v) or _multiple_of(v, divisor)


def _length(test: Callable[[int, int], bool], kind: type[Sized]) -> _Builder:
    def build(c: _Compiler, limit: Any, _: Mapping[str, Any]) -> Check:
        if not isinstance(limit, int) or isinstance(limit, bool):
            raise NotCompilable(f"length {limit!r}")
        return lambda v: not isinstance(v, kind) or test(len(v), limit)

    return build


def _pattern(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    if not isinstance(value, str):
        raise NotCompilable(f"pattern {value!r}")
    compiled = c.pattern(value)
    return lambda v: not isinstance(v, str) or compiled.search(v) is not None


def _format(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    if not isinstance(value, str):
        raise NotCompilable(f"format {value!r}")
    format_ok = c.format_ok
    return lambda v: format_ok(v, value)


def _properties(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    if not isinstance(value, Mapping):
        raise NotCompilable("properties")
    checks = [(name, c.compile(sub)) for name, sub in value.items()]
    checks = [(name, check) for name, check in checks if check is not _ALWAYS]

    def check(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        return all(sub(v[name]) for name, sub in checks if name in v)

    return check


def _required(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise NotCompilable("required")
    names = tuple(value)
    return lambda v: not isinstance(v, dict) or all(n in v for n in names)


def _additional(c: _Compiler, value: Any, schema: Mapping[str, Any]) -> Check:
    if "patternProperties" in schema:
        raise NotCompilable("additionalProperties beside patternProperties")
    known = frozenset(schema.get("properties", {}))
    if value is False:
        return lambda v: not isinstance(v, dict) or known.issuperset(v)
    extra = c.compile(value)
    return lambda v: (
        not isinstance(v, dict) or all(extra(item) for name, item in v.items() if name not in known)
    )


def _items(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    if isinstance(value, list):
        raise NotCompilable("items as a list")
    sub = c.compile(value)
    return lambda v: not isinstance(v, list) or all(sub(item) for item in v)


def _ref(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
    if not isinstance(value, str):
        raise NotCompilable("$ref")
    return c.ref(value)


def _of(kind: str) -> _Builder:
    def build(c: _Compiler, value: Any, _: Mapping[str, Any]) -> Check:
        if not isinstance(value, list) or not value:
            raise NotCompilable(kind)
        subs = [c.compile(s) for s in value]
        if kind == "allOf":
            return lambda v: all(s(v) for s in subs)
        if kind == "anyOf":
            return lambda v: any(s(v) for s in subs)
        return lambda v: sum(1 for s in subs if s(v)) == 1

    return build


def _if(c: _Compiler, value: Any, schema: Mapping[str, Any]) -> Check:
    condition = c.compile(value)
    then = c.compile(schema.get("then", True))
    otherwise = c.compile(schema.get("else", True))
    return lambda v: then(v) if condition(v) else otherwise(v)


def _consumed(c: _Compiler, value: Any, schema: Mapping[str, Any]) -> Check:
    # then / else are compiled with their if; alone they mean nothing (2020-12).
    return _ALWAYS


_KEYWORD_COMPILERS: dict[str, _Builder] = {
    "type": _type,
    "enum": _enum,
    "const": _const,
    "minimum": _bound(lambda v, limit: v >= limit),
    "maximum": _bound(lambda v, limit: v <= limit),
    "exclusiveMinimum": _bound(lambda v, limit: v > limit),
    "exclusiveMaximum": _bound(lambda v, limit: v < limit),
    "multipleOf": _multiple,
    "minLength": _length(lambda n, limit: n >= limit, str),
    "maxLength": _length(lambda n, limit: n <= limit, str),
    "minItems": _length(lambda n, limit: n >= limit, list),
    "maxItems": _length(lambda n, limit: n <= limit, list),
    "minProperties": _length(lambda n, limit: n >= limit, dict),
    "maxProperties": _length(lambda n, limit: n <= limit, dict),
    "pattern": _pattern,
    "format": _format,
    "required": _required,
    "properties": _properties,
    "additionalProperties": _additional,
    "items": _items,
    "$ref": _ref,
    "allOf": _of("allOf"),
    "anyOf": _of("anyOf"),
    "oneOf": _of("oneOf"),
    "if": _if,
    "then": _consumed,
    "else": _consumed,
}
_KEYWORDS = frozenset(_KEYWORD_COMPILERS)
# Cheap, decisive checks first.
_ORDER = (
    "type",
    "enum",
    "const",
    "required",
    "additionalProperties",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "pattern",
    "format",
    "properties",
    "items",
    "$ref",
    "allOf",
    "anyOf",
    "oneOf",
    "if",
    "then",
    "else",
)
