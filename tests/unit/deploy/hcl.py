"""Read terraform/ with python-hcl2 and evaluate the little of it the cross-checks need.

python-hcl2 parses but does not evaluate: an attribute such as
``"${google_pubsub_topic.dead_letter[each.key].id}"`` stays a string. The tests know what
``local.topics`` and ``var.queues`` hold (topics.yaml, the tfvars), so :class:`Terraform` resolves
``each.key`` / ``each.value.x`` templates and references to other resources by evaluating the
referenced resource's own name attribute for the same key. Anything it cannot resolve raises
:class:`UnresolvableError`, so a construct the tests do not understand fails loudly.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

ROOT = Path(__file__).resolve().parents[3]
TERRAFORM = ROOT / "terraform"
ENVIRONMENTS = ("staging", "production")

_INTERPOLATION = re.compile(r"\$\{([^{}]*)\}")
_REFERENCE = re.compile(
    r"^\$\{(?P<type>google_[a-z0-9_]+)\.(?P<name>[a-z0-9_]+)"
    r"(?:\[(?P<key>[^\]]+)\])?(?P<rest>(?:\.[a-z0-9_]+|\[\d+\])*)\}$"
)


class UnresolvableError(ValueError):
    """An expression the test evaluator does not understand."""


def load_hcl(path: Path) -> dict[str, Any]:
    """Parse an HCL file into plain dicts: unquoted strings and labels, no block markers."""
    return _load_cached(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _load_cached(path: Path, _mtime_ns: int) -> dict[str, Any]:
    # Parsing dominates the test run; the mtime in the key keeps edits visible.
    options_type = getattr(hcl2, "SerializationOptions", None)
    with path.open() as handle:
        if options_type is not None:  # python-hcl2 >= 7 quotes strings unless told not to
            raw = hcl2.load(handle, serialization_options=options_type(strip_string_quotes=True))
        else:
            raw = hcl2.load(handle)
    parsed = _normalise(raw)
    assert isinstance(parsed, dict)
    return parsed


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            _unquote(str(k)): _normalise(v) for k, v in value.items() if not str(k).startswith("__")
        }
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


@dataclass(frozen=True)
class Resource:
    type: str
    name: str
    body: Mapping[str, Any]

    @property
    def address(self) -> str:
        return f"{self.type}.{self.name}"

    def block(self, name: str) -> Mapping[str, Any]:
        """The single nested block ``name`` (a KeyError if absent or repeated)."""
        blocks = self.body.get(name)
        if not isinstance(blocks, list) or len(blocks) != 1:
            raise KeyError(f"{self.address} has no single {name} block (got {blocks!r})")
        block = blocks[0]
        assert isinstance(block, Mapping)
        return block


def terraform_files() -> list[Path]:
    return sorted(TERRAFORM.glob("*.tf"))


def resources() -> dict[str, Resource]:
    """Every resource of terraform/*.tf by address."""
    found: dict[str, Resource] = {}
    for path in terraform_files():
        for entry in load_hcl(path).get("resource", []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    address = f"{rtype}.{name}"
                    assert address not in found, f"{address} is declared twice"
                    found[address] = Resource(rtype, name, body)
    return found


def variables() -> dict[str, Mapping[str, Any]]:
    found: dict[str, Mapping[str, Any]] = {}
    for path in terraform_files():
        for entry in load_hcl(path).get("variable", []):
            found.update(entry)
    return found


def locals_() -> dict[str, Any]:
    found: dict[str, Any] = {}
    for path in terraform_files():
        for entry in load_hcl(path).get("locals", []):
            found.update(entry)
    return found


def tfvars(environment: str) -> dict[str, Any]:
    return load_hcl(TERRAFORM / "environments" / f"{environment}.tfvars")


def squash(expression: str) -> str:
    """An expression without whitespace, for comparing HCL written across lines."""
    return re.sub(r"\s+", "", expression)


Each = tuple[str, Any]


def queue_shards(queues: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """What ``local.queue_shards`` (terraform/tasks.tf) evaluates to for a tfvars ``queues``.

    tests/unit/deploy/test_terraform.py pins the HCL expression this mirrors, so the two move
    together.
    """
    shards: dict[str, dict[str, Any]] = {}
    for kind, queue in queues.items():
        count = int(queue.get("shards", 1))
        for shard in range(count):
            key = kind if shard == 0 else f"{kind}-{shard}"
            if key in shards:
                raise UnresolvableError(f"local.queue_shards: key {key!r} appears twice")
            shards[key] = {
                "kind": kind,
                "shard": shard,
                "name": queue["name"] if shard == 0 else f"{queue['name']}-{shard}",
                "max_dispatches_per_second": queue["max_dispatches_per_second"] / count,
                "max_concurrent_dispatches": -(-queue["max_concurrent_dispatches"] // count),
                **{
                    k: queue[k]
                    for k in (
                        "max_attempts",
                        "min_backoff_seconds",
                        "max_backoff_seconds",
                        "max_doublings",
                    )
                },
            }
    return shards


class Terraform:
    """The parsed configuration plus the values the tests know (topics.yaml, one tfvars)."""

    def __init__(self, topology: Mapping[str, Any], tfvars_values: Mapping[str, Any]) -> None:
        self.resources = resources()
        self.locals = locals_()
        self.tfvars = tfvars_values
        topics = topology["topics"]
        self.known: dict[str, Mapping[str, Any]] = {
            "local.topics": topics,
            "local.function_topics": {s["push"]["function"]: t for t, s in topics.items()},
            "local.scheduler_jobs": topology["scheduler"],
            "local.events": topology.get("events", {}),
            "var.queues": tfvars_values["queues"],
            "local.queue_shards": queue_shards(tfvars_values["queues"]),
        }
        for name in ("database_functions", "task_functions"):
            self.known[f"local.{name}"] = {k: k for k in self.set_local(name)}

    def set_local(self, name: str) -> list[str]:
        """The members of a ``toset([...])`` local."""
        expression = squash(str(self.locals[name]))
        match = re.fullmatch(r"\$\{toset\(\[(.*)\]\)\}", expression)
        if not match:
            raise UnresolvableError(f"local.{name} is not toset([...]): {expression}")
        return re.findall(r'"([^"]+)"', match.group(1))

    def instances(self, resource: Resource) -> Iterator[Each | None]:
        """One ``(each.key, each.value)`` per instance; ``None`` for a resource without for_each."""
        for_each = resource.body.get("for_each")
        if for_each is None:
            yield None
            return
        source = str(for_each)
        match = re.fullmatch(r"\$\{((?:local|var)\.[a-z_]+)\}", source)
        if not match or match.group(1) not in self.known:
            raise UnresolvableError(f"{resource.address}: for_each {source}")
        yield from self.known[match.group(1)].items()

    def value(self, expression: Any, each: Each | None) -> str:
        """A string attribute with ``each.*`` and ``var.*`` interpolations substituted.

        ``var.x`` becomes the literal text ``var.x`` unless it is a tfvars scalar, so a grant on
        ``var.database_url_secret_id`` reads as exactly that.
        """
        if not isinstance(expression, str):
            raise UnresolvableError(f"not a string: {expression!r}")
        reference = _REFERENCE.match(expression)
        if reference:
            return self.resolve_reference(expression, each)

        def substitute(match: re.Match[str]) -> str:
            inner = match.group(1).strip()
            if inner == "each.key" and each is not None:
                return each[0]
            if inner.startswith("each.value") and each is not None:
                value: Any = each[1]
                for part in inner.split(".")[2:]:
                    value = value[part]
                return str(value)
            if re.fullmatch(r"var\.[a-z_]+", inner):
                scalar = self.tfvars.get(inner[4:])
                return str(scalar) if isinstance(scalar, str) else inner
            raise UnresolvableError(f"cannot evaluate ${{{inner}}}")

        return _INTERPOLATION.sub(substitute, expression)

    def resolve_reference(self, expression: str, each: Each | None) -> str:
        """``${google_x.y[KEY].attr}`` → y[KEY]'s account_id, repository_id or name."""
        match = _REFERENCE.match(expression)
        if not match:
            raise UnresolvableError(f"not a resource reference: {expression}")
        target = self.resources.get(f"{match['type']}.{match['name']}")
        if target is None:
            raise UnresolvableError(f"reference to an undeclared resource: {expression}")
        key_expression = match["key"]
        target_each: Each | None = None
        if key_expression is not None:
            key = (
                self.value("${" + key_expression + "}", each)
                if not key_expression.startswith('"')
                else key_expression.strip('"')
            )
            items = dict(self.instances(target))  # type: ignore[arg-type]
            if key not in items:
                raise UnresolvableError(
                    f"{expression}: key {key!r} is not an instance of {target.address}"
                )
            target_each = (key, items[key])
        elif target.body.get("for_each") is not None:
            raise UnresolvableError(f"{expression}: {target.address} has for_each but no key")
        for identity in ("account_id", "repository_id", "name"):
            if identity in target.body:
                return self.value(target.body[identity], target_each)
        raise UnresolvableError(f"{target.address} has no name attribute")
