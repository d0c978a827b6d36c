"""terraform/ against the google provider's own schema, for every major in BINDINGS.

The schema comes from the provider's CDK bindings on PyPI (tests/unit/deploy/provider_schema.py;
`./dev test` caches it before pytest runs). The mutation tests below show the check has teeth:
each breaks a scratch copy of terraform/ the way a typo would, and the check must say so.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.unit.deploy.hcl import TERRAFORM, load_hcl, resources
from tests.unit.deploy.provider_schema import BINDINGS, Bindings, ProviderSchema, load
from tests.unit.deploy.schema_check import check_configuration


def pinned() -> tuple[int, int]:
    """(major, minimum minor) of hashicorp/google that versions.tf allows: one major only."""
    terraform_block = load_hcl(TERRAFORM / "versions.tf")["terraform"][0]
    google = terraform_block["required_providers"][0]["google"]
    assert google["source"] == "hashicorp/google"
    match = re.fullmatch(r"~>\s*(\d+)\.(\d+)", google["version"])
    assert match, f"versions.tf pins google {google['version']!r}: use '~> MAJOR.MINOR'"
    return int(match.group(1)), int(match.group(2))


def pinned_major() -> int:
    return pinned()[0]


def pinned_bindings() -> Bindings:
    return next(b for b in BINDINGS if b.major == pinned_major())


@pytest.fixture(scope="session", params=BINDINGS, ids=lambda b: f"google-{b.provider_version}")
def schema(request: pytest.FixtureRequest) -> ProviderSchema:
    bindings = request.param
    assert isinstance(bindings, Bindings)
    return load(bindings)


def test_versions_tf_pins_a_major_whose_schema_is_checked() -> None:
    majors = sorted(b.major for b in BINDINGS)
    assert pinned_major() in majors, f"versions.tf pins {pinned_major()}, schemas cover {majors}"


def test_versions_tf_allows_no_release_older_than_the_checked_one() -> None:
    # Minor releases only add: a name that exists in 8.7 exists in 8.9, not necessarily in 8.2.
    checked = tuple(int(part) for part in pinned_bindings().provider_version.split(".")[:2])
    assert pinned() == checked, f"versions.tf allows from {pinned()}, the check reads {checked}"


def test_terraform_matches_the_provider_schema(schema: ProviderSchema) -> None:
    problems = check_configuration(TERRAFORM, schema)
    assert problems == [], f"google {schema.bindings.provider_version}:\n" + "\n".join(problems)


def test_every_resource_type_of_terraform_is_in_the_schema(schema: ProviderSchema) -> None:
    # Guards the check itself: if it silently skipped files or types, this would still see them.
    used = {r.type for r in resources().values()}
    assert used, "terraform/ declares no resources?"
    assert used <= set(schema.resources), used - set(schema.resources)


# (what a typo does, file, text, replacement, a problem the check must report)
MUTATIONS = [
    (
        "misspelt argument",
        "pubsub.tf",
        "ack_deadline_seconds = each",
        "ack_deadline_second = each",
        "google_pubsub_subscription.push: no argument ack_deadline_second "
        "(did you mean ack_deadline_seconds?)",
    ),
    (
        "misspelt block",
        "pubsub.tf",
        "retry_policy {",
        "retry_polcy {",
        "google_pubsub_subscription.push: no block retry_polcy (did you mean retry_policy?)",
    ),
    (
        "argument written as a block",
        "functions.tf",
        "environment_variables = {",
        "environment_variables {",
        "google_cloudfunctions2_function.function.service_config: environment_variables is an "
        "argument, written as a block",
    ),
    (
        "reference to a missing attribute",
        "pubsub.tf",
        "google_service_account.push.email",
        "google_service_account.push.mail",
        "google_service_account.push has no attribute mail (did you mean email?)",
    ),
    (
        "missing attribute of a nested block, through a for expression",
        "outputs.tf",
        "fn.service_config[0].uri",
        "fn.service_config[0].url",
        "google_cloudfunctions2_function.function (as fn).service_config[0] has no attribute url",
    ),
    (
        "misspelt dynamic block",
        "functions.tf",
        'dynamic "secret_environment_variables"',
        'dynamic "secret_environment_variable"',
        'service_config: dynamic "secret_environment_variable" is no block here',
    ),
    (
        "misspelt argument inside a dynamic block",
        "functions.tf",
        "key        = secret_environment_variables.value",
        "kee        = secret_environment_variables.value",
        "service_config.secret_environment_variables: no argument kee",
    ),
    (
        "attribute of a for_each resource read without an instance key",
        "iam.tf",
        'google_service_account.function["select"].email',
        "google_service_account.function.email",
        "google_service_account.function has for_each or count: .email needs an instance",
    ),
    (
        "misspelt resource type",
        "tasks.tf",
        'resource "google_cloud_tasks_queue" "queue"',
        'resource "google_cloud_task_queue" "queue"',
        "no resource type google_cloud_task_queue in the provider",
    ),
]


@pytest.mark.parametrize(
    ("case", "filename", "old", "new", "expected"), MUTATIONS, ids=[m[0] for m in MUTATIONS]
)
def test_the_check_catches(
    tmp_path: Path, case: str, filename: str, old: str, new: str, expected: str
) -> None:
    scratch = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, scratch)
    path = scratch / filename
    text = path.read_text()
    assert text.count(old) >= 1, f"{case}: {old!r} is no longer in {filename}; update the test"
    path.write_text(text.replace(old, new, 1))

    problems = check_configuration(scratch, load(pinned_bindings()))

    assert any(expected in problem for problem in problems), (
        f"{case}: expected {expected!r}, got {problems}"
    )
