"""deploy.sh: refuses with a clear list before touching anything, packages what Terraform uploads.

terraform and gcloud are replaced by stubs on PATH that record every call, so these tests prove
that a refused run called neither, and never reach the network.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.unit.deploy.hcl import ROOT, TERRAFORM, variables

DEPLOY = ROOT / "deploy.sh"
COMPLETE_TFVARS = TERRAFORM / "environments" / "staging.tfvars"
BACKEND = TERRAFORM / "environments" / "staging.backend.hcl"


@pytest.fixture
def stubs(tmp_path: Path) -> tuple[Path, Path]:
    """A bin directory with recording terraform and gcloud stubs, and their call log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("terraform", "gcloud"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexit 0\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return bin_dir, calls


def run_deploy(
    *args: str, path: str, tmp_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": path, "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    env.update(extra_env or {})
    return subprocess.run(
        ["bash", str(DEPLOY), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )


def system_path(bin_dir: Path | None = None) -> str:
    parts = [str(bin_dir)] if bin_dir else []
    return os.pathsep.join([*parts, "/usr/local/bin", "/usr/bin", "/bin"])


def test_shellcheck_passes() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (CI: apt-get install -y shellcheck)")
    result = subprocess.run(
        ["shellcheck", str(DEPLOY)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_required_variables_are_the_terraform_variables_without_default() -> None:
    text = DEPLOY.read_text()
    line = next(x for x in text.splitlines() if x.startswith("REQUIRED_VARS=("))
    listed = line.removeprefix("REQUIRED_VARS=(").removesuffix(")").split()
    required = [name for name, spec in variables().items() if "default" not in spec]
    assert sorted(listed) == sorted(required)


def test_plan_with_missing_variables_names_them_and_calls_nothing(
    tmp_path: Path, stubs: tuple[Path, Path]
) -> None:
    bin_dir, calls = stubs
    partial = tmp_path / "partial.tfvars"
    partial.write_text('environment = "staging"\nregion = "europe-west1"\nproject_id = ""\n')
    result = run_deploy(
        "--env",
        "staging",
        "--plan",
        "--var-file",
        str(partial),
        "--backend-config",
        str(BACKEND),
        "--build-dir",
        str(tmp_path / "build"),
        path=system_path(bin_dir),
        tmp_path=tmp_path,
    )
    assert result.returncode == 2
    assert "missing variables for staging: project_id tasks_location queues" in result.stderr
    assert not calls.exists(), f"terraform/gcloud ran before the check: {calls.read_text()}"
    assert not (tmp_path / "build").exists(), "nothing is packaged before the check"


def test_tf_var_environment_variables_count_as_set(
    tmp_path: Path, stubs: tuple[Path, Path]
) -> None:
    bin_dir, calls = stubs
    partial = tmp_path / "partial.tfvars"
    partial.write_text('environment = "staging"\nregion = "europe-west1"\n')
    result = run_deploy(
        "--env",
        "staging",
        "--plan",
        "--var-file",
        str(partial),
        "--backend-config",
        str(BACKEND),
        path=system_path(bin_dir),
        tmp_path=tmp_path,
        extra_env={"TF_VAR_project_id": "p-123456", "TF_VAR_tasks_location": "europe-west1"},
    )
    assert result.returncode == 2
    assert "missing variables for staging: queues " in result.stderr
    assert not calls.exists()


def test_missing_files_wrong_environment_and_missing_tools_are_listed_together(
    tmp_path: Path,
) -> None:
    production = TERRAFORM / "environments" / "production.tfvars"
    # Only python3 and the shell utilities: no terraform, no gcloud.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "grep", "sed", "head", "dirname", "python3", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    result = run_deploy(
        "--env",
        "staging",
        "--plan",
        "--var-file",
        str(production),
        "--backend-config",
        str(tmp_path / "absent.hcl"),
        path=str(bin_dir),
        tmp_path=tmp_path,
    )
    assert result.returncode == 2
    assert 'declares environment = "production" but --env is staging' in result.stderr
    assert "backend configuration not found" in result.stderr
    assert "terraform is not installed" in result.stderr
    assert "gcloud is not installed" in result.stderr
    missing_file = run_deploy(
        "--env",
        "staging",
        "--plan",
        "--var-file",
        str(tmp_path / "absent.tfvars"),
        path=system_path(),
        tmp_path=tmp_path,
    )
    assert missing_file.returncode == 2
    assert "variables file not found" in missing_file.stderr
    assert "missing variables for staging: project_id environment region" in missing_file.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--env is required"),
        (("--env", "dev", "--plan"), "--env must be staging or production"),
        (("--env", "staging"), "choose an action"),
        (("--env", "staging", "--plan", "--apply"), "choose one of"),
        (("--env", "staging", "--bogus"), "unknown argument: --bogus"),
    ],
)
def test_bad_arguments_print_a_usage_error(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = run_deploy(*args, path=system_path(), tmp_path=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "--help" in result.stderr


def test_complete_plan_packages_then_runs_init_and_plan_with_the_env_files(
    tmp_path: Path, stubs: tuple[Path, Path]
) -> None:
    bin_dir, calls = stubs
    build = tmp_path / "build"
    result = run_deploy(
        "--env",
        "staging",
        "--plan",
        "--build-dir",
        str(build),
        path=system_path(bin_dir),
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    recorded = calls.read_text().splitlines()
    assert [line.split()[0:2] for line in recorded] == [
        ["terraform", f"-chdir={TERRAFORM}"],
        ["terraform", f"-chdir={TERRAFORM}"],
    ]
    init, plan = recorded
    assert f" init -input=false -reconfigure -backend-config={BACKEND}" in init
    assert f"-var-file={COMPLETE_TFVARS}" in plan
    assert f"-var=function_source_dir={build / 'functions'}" in plan
    assert f"-out={build / 'staging.tfplan'}" in plan
    assert (build / "functions" / "select.zip").is_file()


def test_apply_refuses_without_a_terminal_or_yes_before_migrating(
    tmp_path: Path, stubs: tuple[Path, Path]
) -> None:
    bin_dir, calls = stubs
    result = run_deploy(
        "--env",
        "staging",
        "--apply",
        "--build-dir",
        str(tmp_path / "build"),
        path=system_path(bin_dir),
        tmp_path=tmp_path,
    )
    assert result.returncode == 2
    assert "--apply needs --yes" in result.stderr
    assert not any(" apply " in line or "gcloud" in line for line in calls.read_text().splitlines())


def package(tmp_path: Path, name: str) -> Path:
    build = tmp_path / name
    result = run_deploy(
        "--env",
        "production",
        "--package",
        "--build-dir",
        str(build),
        path=system_path(),
        tmp_path=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return build / "functions"


def test_package_builds_one_deterministic_archive_per_function(tmp_path: Path) -> None:
    first, second = package(tmp_path, "a"), package(tmp_path, "b")
    names = sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))
    assert sorted(p.stem for p in first.glob("*.zip")) == names
    for name in names:
        archive = first / f"{name}.zip"
        assert archive.read_bytes() == (second / f"{name}.zip").read_bytes(), name
        with zipfile.ZipFile(archive) as bundle:
            entries = set(bundle.namelist())
            assert bundle.read("main.py") == (ROOT / "functions" / name / "main.py").read_bytes()
            requirements = bundle.read("requirements.txt").decode().split()
        dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert requirements == [d.replace(" ", "") for d in dependencies["dependencies"]]
        assert {"topics.yaml", "app.toml", "app.staging.toml", "app.production.toml"} <= entries
        assert "shared/config.py" in entries
        assert {f"schemas/{p.name}" for p in (ROOT / "schemas").glob("*.json")} <= entries
        assert not [e for e in entries if e.startswith("shared/cli/") or "__pycache__" in e]


def test_packaged_function_imports_from_its_archive_alone(tmp_path: Path) -> None:
    """The bundle is self-sufficient: main.py and shared/ import without the repository."""
    archive = package(tmp_path, "build") / "select.zip"
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(unpacked)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import main, shared; "
        "assert shared.__file__.startswith(sys.argv[1]), shared.__file__; "
        "from shared.config import load_settings; "
        "s = load_settings(environ={'DISPATCHER_ENV': 'production'}); "
        "assert s.project == 'dispatcher-production', s.project"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(unpacked)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": system_path(), "HOME": str(tmp_path)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
