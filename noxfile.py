"""Sessions CI and developers run: `./dev test` calls lint, typecheck, terraform and tests.

`./dev` installs the project into .venv and runs nox with --no-venv, so every session uses that
one environment instead of building four.
"""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["lint", "typecheck", "terraform", "tests"]
nox.options.error_on_missing_interpreters = True

PYTHON_PATHS = ["shared", "emulators", "functions", "tests", "bench", "noxfile.py"]


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    session.run("ruff", "check", *PYTHON_PATHS)
    session.run("ruff", "format", "--check", *PYTHON_PATHS)


@nox.session(python=False)
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the library, emulators, functions and tests."""
    session.run("mypy")


@nox.session(python=False)
def terraform(session: nox.Session) -> None:
    """Cache the google provider's schema for the tests, then terraform fmt -check.

    Providers cannot be downloaded here, so tests/unit/deploy checks terraform/ against the schema
    inside the provider's CDK bindings on PyPI: the wheels are fetched (no deps) and compacted into
    .cache/provider-schemas/ once per version; later runs find them there and touch no network.
    """
    session.run("python", "-m", "tests.unit.deploy.provider_schema", "fetch")
    if shutil.which("terraform") is None:
        session.skip("terraform is not installed")
    session.run("terraform", "fmt", "-check", "-recursive", "terraform")


@nox.session(python=False)
def tests(session: nox.Session) -> None:
    """Unit, integration and end-to-end tests (integration ones start their own emulators)."""
    session.run("pytest", "--durations=15", *(session.posargs or ["tests"]))


@nox.session(python=False)
def unit(session: nox.Session) -> None:
    """Only the unit tests: no emulator, no network."""
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Every benchmark in bench/; results land in bench/results/*.json."""
    import pathlib

    for script in sorted(pathlib.Path("bench").glob("*.py")):
        # Programs only: helpers such as bench/cpu.py have no __main__ block.
        if not script.name.startswith("_") and "__main__" in script.read_text():
            session.run("python", "-m", f"bench.{script.stem}", *session.posargs)
