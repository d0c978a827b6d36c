"""terraform/ against the provider's schema: what ``terraform validate`` would say about names.

Checked, for every ``*.tf`` file of a directory:

- every resource and data source type exists in the provider;
- every argument of a resource, data source, nested block, ``dynamic`` block and the ``provider``
  block exists, and is written the way the schema says: an argument as ``name = value``, a block
  as ``name { ... }`` (or ``dynamic "name"``), never one for the other;
- every reference ``google_x.name[...].attr[0].nested`` and ``data.google_x.name.attr`` names a
  declared resource and attributes it has (arguments, blocks and computed attributes), also
  through ``for`` expressions over a resource (``for k, fn in google_x.y : fn.attr``).

Not checked: value types, required arguments, conflicts between arguments. Those need the
provider binary; the names are what a plan would trip over first and what a rename breaks.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hcl2

from tests.unit.deploy.provider_schema import Block, ProviderSchema

# Terraform's own meta-arguments, valid in every resource and data source.
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider"}
META_BLOCKS = {"lifecycle", "provisioner", "connection"}

# A reference: optional data. prefix, type, name, then a chain of .attr and [index] steps.
_REFERENCE = re.compile(
    r"(?<![\w.])(?P<data>data\.)?(?P<type>google_[a-z0-9_]+)\.(?P<name>[a-z_][a-z0-9_-]*)"
    r"(?P<steps>(?:\.[a-z_][a-z0-9_]*|\[(?:[^\[\]]|\[[^\[\]]*\])*\])*)"
)
_STEP = re.compile(r"\.(?P<attr>[a-z_][a-z0-9_]*)|\[(?:[^\[\]]|\[[^\[\]]*\])*\]")
# ``for k, v in google_x.y :`` or ``for v in google_x.y :`` (v iterates the instances).
_FOR = re.compile(
    r"\bfor\s+(?P<first>\w+)(?:\s*,\s*(?P<second>\w+))?\s+in\s+"
    r"(?P<data>data\.)?(?P<type>google_[a-z0-9_]+)\.(?P<name>[a-z_][a-z0-9_-]*)\s*:"
)


@dataclass(frozen=True)
class Declared:
    """A resource or data source of the configuration, as references see it."""

    block: Block
    repeated: bool  # for_each or count: a reference must pick an instance first


def load_raw(path: Path) -> dict[str, Any]:
    """Parse one file keeping python-hcl2's ``__is_block__`` markers (block vs argument)."""
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=True)
    with path.open() as handle:
        parsed = hcl2.load(handle, serialization_options=options)
    assert isinstance(parsed, dict)
    return parsed


def is_block(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(item, dict) and item.get("__is_block__") for item in value)
    )


def check_configuration(directory: Path, schema: ProviderSchema) -> list[str]:
    """Every problem of ``directory/*.tf`` against ``schema``; empty when clean."""
    problems: list[str] = []
    files = {path.name: load_raw(path) for path in sorted(directory.glob("*.tf"))}
    declared: dict[str, Declared] = {}
    for filename, tree in files.items():
        for kind, types in (("resource", schema.resources), ("data", schema.data_sources)):
            for entry in tree.get(kind, []):
                for rtype, named in entry.items():
                    for name, body in named.items():
                        where = f"{filename}: {'data.' if kind == 'data' else ''}{rtype}.{name}"
                        block = types.get(rtype)
                        if block is None:
                            problems.append(f"{where}: no {kind} type {rtype} in the provider")
                            continue
                        problems += check_body(body, block, where, top_level=True)
                        prefix = "data." if kind == "data" else ""
                        repeated = "for_each" in body or "count" in body
                        declared[f"{prefix}{rtype}.{name}"] = Declared(block, repeated)
        for entry in tree.get("provider", []):
            for name, body in entry.items():
                if name == "google":
                    where = f'{filename}: provider "google"'
                    problems += check_body(body, schema.provider, where, top_level=False)
    for filename, tree in files.items():
        for text in strings(tree):
            problems += [f"{filename}: {p}" for p in check_references(text, declared)]
    return problems


def check_body(body: Mapping[str, Any], block: Block, where: str, *, top_level: bool) -> list[str]:
    """Arguments and nested blocks of one block body, recursively."""
    problems: list[str] = []
    for key, value in body.items():
        if key.startswith("__"):
            continue
        if top_level and (key in META_ARGUMENTS or key in META_BLOCKS):
            continue
        # python-hcl2 writes dynamic blocks as [{label: {for_each, content, ...}}]
        if key == "dynamic" and isinstance(value, list):
            for entry in value:
                for label, spec in entry.items():
                    if label.startswith("__"):
                        continue
                    if label not in block.blocks:
                        kind = "an argument" if label in block.arguments else "no block"
                        problems.append(f'{where}: dynamic "{label}" is {kind} here')
                        continue
                    for content in spec.get("content", []):
                        inner = f"{where}.{label}"
                        problems += check_body(content, block.blocks[label], inner, top_level=False)
            continue
        if is_block(value):
            if key in block.blocks:
                for item in value:
                    problems += check_body(
                        item, block.blocks[key], f"{where}.{key}", top_level=False
                    )
            elif key in block.arguments:
                problems.append(f"{where}: {key} is an argument, written as a block")
            else:
                problems.append(f"{where}: no block {key}{suggest(key, block.blocks)}")
        elif key in block.arguments:
            continue
        elif key in block.blocks:
            problems.append(f"{where}: {key} is a block, written as an argument")
        else:
            problems.append(f"{where}: no argument {key}{suggest(key, block.arguments)}")
    return problems


def suggest(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def strings(tree: Any) -> Iterator[str]:
    """Every string holding an expression, anywhere in a parsed file."""
    if isinstance(tree, dict):
        for value in tree.values():
            yield from strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from strings(value)
    elif isinstance(tree, str) and "${" in tree:
        yield tree


def check_references(text: str, declared: Mapping[str, Declared]) -> list[str]:
    problems: list[str] = []
    for match in _REFERENCE.finditer(text):
        address = f"{match['data'] or ''}{match['type']}.{match['name']}"
        target = declared.get(address)
        if target is None:
            problems.append(f"reference to {address}, which is not declared")
            continue
        steps = [m.group(0) for m in _STEP.finditer(match["steps"])]
        if target.repeated and steps:
            if not steps[0].startswith("["):
                problems.append(f"{address} has for_each or count: {steps[0]} needs an instance")
                continue
            steps = steps[1:]  # the instance key
        problems += walk(address, target.block, steps)
    # for k, v in google_x.y : ... v.attr ...  -- v is one instance of google_x.y
    for loop in _FOR.finditer(text):
        address = f"{loop['data'] or ''}{loop['type']}.{loop['name']}"
        target = declared.get(address)
        if target is None:
            continue  # reported above
        variable = loop["second"] or loop["first"]
        uses = re.finditer(
            rf"(?<![\w.]){re.escape(variable)}(?P<steps>(?:\.[a-z_][a-z0-9_]*|\[[^\[\]]*\])+)",
            text[loop.end() :],
        )
        for use in uses:
            steps = [m.group(0) for m in _STEP.finditer(use["steps"])]
            problems += walk(f"{address} (as {variable})", target.block, steps)
    return problems


def walk(address: str, block: Block, steps: list[str]) -> list[str]:
    """Follow ``.attr`` / ``[i]`` steps through the schema as far as it describes them."""
    current: Block | None = block
    path = address
    for step in steps:
        if current is None:
            break  # a scalar, a list of scalars or a map: keys are data, not schema
        if step.startswith("["):
            path += step  # an index into a block list or computed list: same object type
            continue
        name = step[1:]
        if name not in current.attributes:
            hint = suggest(name, current.attributes)
            return [f"{path} has no attribute {name}{hint}"]
        current = current.attributes[name]
        path += step
    return []
