"""Fixtures shared by the deployment cross-checks: topics.yaml as Terraform sees it, app config."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from shared.config import Settings, load_settings
from tests.unit.deploy.hcl import ENVIRONMENTS, ROOT, Terraform, tfvars


@pytest.fixture(scope="session")
def topology() -> dict[str, Any]:
    """topics.yaml exactly as yamldecode() gives it to Terraform."""
    raw = yaml.safe_load((ROOT / "topics.yaml").read_text())
    assert isinstance(raw, dict)
    return raw


@pytest.fixture(params=ENVIRONMENTS)
def environment(request: pytest.FixtureRequest) -> str:
    value = request.param
    assert isinstance(value, str)
    return value


def app_settings(environment: str) -> Settings:
    """What a deployed function of ``environment`` reads: app.toml + app.<env>.toml, typed."""
    return load_settings(environ={"DISPATCHER_ENV": environment}, config_dir=ROOT)


@pytest.fixture
def terraform(topology: dict[str, Any], environment: str) -> Terraform:
    return Terraform(topology, tfvars(environment))
