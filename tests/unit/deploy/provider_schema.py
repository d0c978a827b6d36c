"""The google provider's schema, read from the prebuilt CDK bindings on PyPI, cached per version.

Terraform providers cannot be downloaded where the tests run, so ``terraform validate`` is out of
reach. The CDK bindings of the provider are on PyPI, and their wheel carries the provider's whole
schema as a jsii assembly (``<package>/_jsii/provider-google@<v>.jsii.tgz``, JSON
``package/.jsii``): one class per resource and data source, one struct per nested block, and every
property documented with a registry link ending in ``#<terraform_name>``.

The assembly is big (about 130 MB of JSON, 10-15 s to parse), so :func:`fetch` reads it once per
package version and writes a compact schema (names only, a few MB) to
``.cache/provider-schemas/<package>-<version>.json``; the tests only read that file. ``./dev test``
runs ``fetch`` in the ``terraform`` nox session, before pytest, so the tests need no network.
Only the wheel is needed (``pip download --no-deps``): the bindings' runtime (jsii, constructs,
node) is never installed or imported.

    python -m tests.unit.deploy.provider_schema fetch    # download what is missing, then compact
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache" / "provider-schemas"
# Bump when the compact format changes, so an old cache file is rebuilt instead of misread.
FORMAT = 1


@dataclass(frozen=True)
class Bindings:
    """One PyPI release of the CDK bindings, and the provider release it was generated from."""

    package: str
    version: str
    provider_version: str
    sha256: str  # of the wheel: a re-published or tampered file must not pass silently

    @property
    def major(self) -> int:
        return int(self.provider_version.split(".")[0])

    @property
    def cache_file(self) -> Path:
        return CACHE / f"{self.package}-{self.version}.json"


# Every provider major the tests check terraform/ against. versions.tf must pin one of these
# (a test says so); the other is checked too, so moving between them stays a one-line change.
# To use something only the newer major has, drop the older entry here and say so in README.md.
BINDINGS = (
    Bindings(
        "cdktn-provider-google",
        "21.1.0",
        "8.7.0",
        "157dead5025d5db5abe48e40cc49f0b6a4d8088fd0498eb17ad5a36bca811b2a",
    ),
    Bindings(
        "cdktf-cdktf-provider-google",
        "16.12.1",
        "6.50.0",
        "88d021c89e1cf2abf2c935716d6548d26fe3da4bed30713d4fa36df1ef137436",
    ),
)


class SchemaMissingError(RuntimeError):
    """The compact schema is not cached: ``./dev test`` (or ``fetch``) has not run here."""


# --- the compact schema -------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """What may be written inside one resource, data source or nested block, and read from it.

    ``arguments``: names settable as ``name = value``. ``blocks``: names written as nested blocks
    (``name { ... }`` or ``dynamic "name"``), with their own schema. ``attributes``: every name a
    reference may read (``google_x.y.<name>``): arguments, blocks and computed attributes; the
    value is the schema of the object behind it (a block or a computed list of objects), or None
    for a scalar, list of scalars or map.
    """

    arguments: frozenset[str]
    blocks: Mapping[str, Block]
    attributes: Mapping[str, Block | None]


@dataclass(frozen=True)
class ProviderSchema:
    bindings: Bindings
    provider: Block
    resources: Mapping[str, Block]
    data_sources: Mapping[str, Block]


def load(bindings: Bindings) -> ProviderSchema:
    """The cached compact schema of ``bindings`` (memoised: each file is parsed once per run)."""
    return _load(bindings)


@functools.cache
def _load(bindings: Bindings) -> ProviderSchema:
    path = bindings.cache_file
    if not path.exists():
        raise SchemaMissingError(
            f"{path.relative_to(ROOT)} is missing: run `./dev test` once, or "
            "`python -m tests.unit.deploy.provider_schema fetch` (downloads the "
            f"{bindings.package}=={bindings.version} wheel from PyPI)"
        )
    raw = json.loads(path.read_text())
    if raw.get("format") != FORMAT:
        raise SchemaMissingError(f"{path} has an old format: run the fetch again")
    # Nodes refer to each other by id (some blocks nest themselves): create them all, then link.
    nodes = {key: Block(frozenset(node["arguments"]), {}, {}) for key, node in raw["nodes"].items()}
    for key, node in raw["nodes"].items():
        blocks = nodes[key].blocks
        attributes = nodes[key].attributes
        assert isinstance(blocks, dict) and isinstance(attributes, dict)
        blocks.update({name: nodes[child] for name, child in node["blocks"].items()})
        attributes.update(
            {
                name: None if child is None else nodes[child]
                for name, child in node["attributes"].items()
            }
        )
    return ProviderSchema(
        bindings=bindings,
        provider=nodes[raw["provider"]],
        resources={name: nodes[key] for name, key in raw["resources"].items()},
        data_sources={name: nodes[key] for name, key in raw["data_sources"].items()},
    )


# --- from the jsii assembly to the compact schema -----------------------------------------------

_DOC_LINK = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/google/(?P<version>[\d.]+)/docs/?"
    r"(?:(?P<kind>resources|data-sources)/(?P<name>[a-z0-9_]+))?(?:#(?P<attribute>[a-z0-9_]+))?"
)
# Properties every generated class has that are no Terraform attribute.
_NOT_ATTRIBUTES = {"internalValue", "fqn", "creationStack", "terraformResourceType"}
_RESOURCE_BASES = {"TerraformResource", "TerraformDataSource"}


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


class _Assembly:
    """The jsii type table, walked into a table of nodes that refer to each other by id.

    A node is ``{"arguments": [names], "blocks": {name: id}, "attributes": {name: id | None}}``;
    its id is the jsii name of the struct or class it comes from.
    """

    def __init__(self, types: Mapping[str, Any]) -> None:
        self.types = types
        self.nodes: dict[str, dict[str, Any]] = {}
        self.provider_versions: set[str] = set()

    def link(self, member: Mapping[str, Any]) -> re.Match[str] | None:
        docs = member.get("docs", {})
        return _DOC_LINK.search(f"{docs.get('summary', '')} {docs.get('remarks', '')}")

    def struct_of(self, type_ref: Mapping[str, Any]) -> str | None:
        """The struct a property's type names, alone or as list element: that is a block."""
        if "fqn" in type_ref:
            target = self.types.get(type_ref["fqn"])
            return type_ref["fqn"] if target is not None and target.get("datatype") else None
        if "collection" in type_ref:
            return self.struct_of(type_ref["collection"]["elementtype"])
        for member in type_ref.get("union", {}).get("types", []):
            found = self.struct_of(member)
            if found is not None:
                return found
        return None

    def node(self, key: str, settable: str | None, readable: str | None) -> str:
        """The node ``key``: arguments and blocks of struct ``settable``, attributes of class
        ``readable`` (a resource class or an OutputReference). Built once, cycles allowed."""
        if key in self.nodes:
            return key
        node: dict[str, Any] = {"arguments": [], "blocks": {}, "attributes": {}}
        self.nodes[key] = node  # before recursing: a block may contain itself
        names: dict[str, str] = {}
        for prop in self.types[settable].get("properties", []) if settable else []:
            match = self.link(prop)
            if match is None or match["attribute"] is None:
                continue  # meta-arguments (count, for_each, ...) come from cdktn, unlinked
            name = names[prop["name"]] = match["attribute"]
            nested = self.struct_of(prop["type"])
            if nested is None:
                node["arguments"].append(name)
            else:
                node["blocks"][name] = self.block(nested)
        node["arguments"].sort()
        for prop in self.types[readable].get("properties", []) if readable else []:
            camel = prop["name"]
            if prop.get("static") or camel.endswith("Input") or camel in _NOT_ATTRIBUTES:
                continue
            # Settable ones carry their terraform name in the struct's links; computed ones are
            # only camelCased, which cdktf derives from the snake_case name.
            name = names.get(camel) or _snake(camel)
            node["attributes"][name] = node["blocks"].get(name) or self.object_behind(prop["type"])
        if readable is None:  # no readable class: what a block sets is what it reads
            node["attributes"] = dict.fromkeys(node["arguments"]) | node["blocks"]
        return key

    def block(self, struct: str) -> str:
        reference = f"{struct}OutputReference"
        return self.node(struct, struct, reference if reference in self.types else None)

    def object_behind(self, type_ref: Mapping[str, Any]) -> str | None:
        """The readable object behind an attribute: an OutputReference, or a List/Map of them."""
        fqn = type_ref.get("fqn")
        if not isinstance(fqn, str) or self.types.get(fqn, {}).get("kind") != "class":
            return None
        if fqn.endswith("OutputReference"):
            struct = fqn.removesuffix("OutputReference")
            return self.block(struct) if struct in self.types else self.node(fqn, None, fqn)
        for method in self.types[fqn].get("methods", []):
            if method["name"] == "get" and "returns" in method:  # ComplexList / ComplexMap
                return self.object_behind(method["returns"]["type"])
        return None

    def top_level(self) -> Iterator[tuple[str, str, str]]:
        """(resources | data-sources, terraform type, node id) for every resource class."""
        for fqn, entry in self.types.items():
            base = str(entry.get("base", "")).rpartition(".")[2]
            if entry.get("kind") != "class" or base not in _RESOURCE_BASES:
                continue
            match = self.link(entry)
            config = f"{fqn}Config"
            if match is None or match["kind"] is None or config not in self.types:
                continue
            self.provider_versions.add(match["version"])
            yield match["kind"], f"google_{match['name']}", self.node(fqn, config, fqn)

    def provider(self) -> str:
        for fqn, entry in self.types.items():
            if str(entry.get("base", "")).endswith(".TerraformProvider"):
                return self.node(fqn, f"{fqn}Config", None)
        raise ValueError("the assembly declares no provider class")


def compact(assembly: Mapping[str, Any], bindings: Bindings) -> dict[str, Any]:
    """The compact schema of a parsed jsii assembly (names and nesting, nothing else)."""
    walker = _Assembly(assembly["types"])
    found: dict[str, dict[str, str]] = {"resources": {}, "data-sources": {}}
    for kind, name, key in walker.top_level():
        found[kind][name] = key
    if walker.provider_versions != {bindings.provider_version}:
        raise ValueError(
            f"{bindings.package} {bindings.version} documents google "
            f"{sorted(walker.provider_versions)}, not {bindings.provider_version}"
        )
    provider = walker.provider()
    return {
        "format": FORMAT,
        "package": bindings.package,
        "version": bindings.version,
        "provider_version": bindings.provider_version,
        "provider": provider,
        "resources": found["resources"],
        "data_sources": found["data-sources"],
        "nodes": walker.nodes,
    }


def read_assembly(wheel: Path) -> dict[str, Any]:
    """The jsii assembly inside a bindings wheel, without installing or importing it."""
    with zipfile.ZipFile(wheel) as archive:
        tarballs = [n for n in archive.namelist() if re.search(r"/_jsii/.*\.jsii\.tgz$", n)]
        if len(tarballs) != 1:
            raise ValueError(f"{wheel.name}: expected one _jsii/*.jsii.tgz, found {tarballs}")
        with archive.open(tarballs[0]) as raw, tarfile.open(fileobj=raw, mode="r|gz") as tar:
            for member in tar:
                if member.name == "package/.jsii":
                    handle = tar.extractfile(member)
                    assert handle is not None
                    parsed = json.load(handle)
                    assert isinstance(parsed, dict)
                    return parsed
    raise ValueError(f"{wheel.name}: no package/.jsii in {tarballs[0]}")


def fetch(bindings: Bindings, *, log: Any = print) -> Path:
    """Cache the compact schema of ``bindings`` (downloads the wheel once; no-op when cached)."""
    target = bindings.cache_file
    if target.exists() and json.loads(target.read_text()).get("format") == FORMAT:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="provider-schema-") as scratch:
        log(f"provider schema: downloading {bindings.package}=={bindings.version} (no deps)")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                scratch,
                f"{bindings.package}=={bindings.version}",
            ],
            check=True,
        )
        wheels = list(Path(scratch).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download gave {wheels}, expected one wheel")
        digest = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if digest != bindings.sha256:
            raise RuntimeError(f"{wheels[0].name}: sha256 {digest}, expected {bindings.sha256}")
        log(f"provider schema: compacting google {bindings.provider_version} (about 15 s)")
        schema = compact(read_assembly(wheels[0]), bindings)
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(schema, sort_keys=True))
    partial.replace(target)  # atomic: an interrupted fetch never leaves a half file behind
    return target


def main(argv: list[str]) -> int:
    if argv != ["fetch"]:
        print(__doc__)
        return 2
    for bindings in BINDINGS:
        path = fetch(bindings)
        print(f"provider schema: google {bindings.provider_version} in {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
