"""Least privilege: terraform/iam.tf grants exactly the README's role table, no primitive roles."""

from __future__ import annotations

import re
from typing import Any

from shared.topology import FUNCTION_NAMES
from tests.unit.deploy.hcl import ROOT, TERRAFORM, Terraform, queue_shards, resources

PRIMITIVE = re.compile(r"roles/(owner|editor|viewer)\b")
PUBSUB_AGENT = "Pub/Sub service agent"

# IAM resource type -> (scope kind as the README writes it, the attribute naming the resource).
SCOPES = {
    "google_project_iam_member": ("project", "project"),
    "google_pubsub_topic_iam_member": ("topic", "topic"),
    "google_pubsub_subscription_iam_member": ("subscription", "subscription"),
    "google_cloud_tasks_queue_iam_member": ("queue", "name"),
    "google_secret_manager_secret_iam_member": ("secret", "secret_id"),
    "google_service_account_iam_member": ("service account", "service_account_id"),
    "google_cloud_run_service_iam_member": ("Cloud Run service", "service"),
    "google_artifact_registry_repository_iam_member": ("repository", "repository"),
}

Grant = tuple[str, str, str, str]  # principal, role, scope kind, resource name ("" for project)


def terraform_grants(terraform: Terraform) -> set[Grant]:
    """Every (principal, role, scope) the configuration grants, for_each expanded."""
    grants: set[Grant] = set()
    for resource in terraform.resources.values():
        if not re.search(r"_iam_(member|binding|policy)$", resource.type):
            continue
        assert resource.type in SCOPES, f"{resource.address}: unexpected IAM resource type"
        kind, attribute = SCOPES[resource.type]
        role = resource.body["role"]
        assert re.fullmatch(r"roles/[a-zA-Z.]+", role), (
            f"{resource.address}: role must be a literal"
        )
        for each in terraform.instances(resource):
            principal = principal_of(terraform, resource.body["member"], each)
            if kind == "project":
                assert resource.body["project"] == "${var.project_id}"
                name = ""
            else:
                name = terraform.value(resource.body[attribute], each)
            grants.add((principal, role, kind, name))
    return grants


def principal_of(terraform: Terraform, member: str, each: Any) -> str:
    if member == "${local.pubsub_service_agent}":
        assert "@gcp-sa-pubsub.iam.gserviceaccount.com" in terraform.locals["pubsub_service_agent"]
        return PUBSUB_AGENT
    match = re.fullmatch(r"serviceAccount:(\$\{google_service_account\.[^}]+\})", member)
    assert match, f"member {member!r} is not one of our service accounts"
    return terraform.value(match.group(1), each)


def readme_grants(terraform: Terraform) -> set[Grant]:
    """The role table of README.md (Deployment), scopes expanded like the Terraform ones."""
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- BEGIN deployment")
    section = text[start : text.index("<!-- END deployment -->")]
    header = "| service account | role | scope | why |"
    assert header in section, "the README deployment section has no role table"
    rows = section[section.index(header) :].splitlines()[2:]
    grants: set[Grant] = set()
    for row in rows:
        if not row.startswith("|"):
            break
        principal_cell, role_cell, scope_cell, why = (c.strip() for c in row.strip("|").split("|"))
        assert why, f"README row without a reason: {row}"
        principal = _ticked(principal_cell)[0] if "`" in principal_cell else principal_cell
        role = _ticked(role_cell)[0]
        kind = scope_cell.split("`")[0].strip()
        names = _ticked(scope_cell) or [""]
        for name in names:
            if name == "local.queue_shards":
                grants.update(
                    (principal, role, kind, q["name"])
                    for q in queue_shards(terraform.tfvars["queues"]).values()
                )
            else:
                grants.add((principal, role, kind, name))
    return grants


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def test_readme_role_table_equals_the_terraform_grants(terraform: Terraform) -> None:
    granted = terraform_grants(terraform)
    documented = readme_grants(terraform)
    assert granted - documented == set(), "granted in terraform/ but not in the README table"
    assert documented - granted == set(), "in the README table but not granted in terraform/"


def test_each_function_account_has_exactly_the_documented_roles(terraform: Terraform) -> None:
    granted = terraform_grants(terraform)
    documented = readme_grants(terraform)
    functions = {
        terraform.value(
            terraform.resources["google_service_account.function"].body["account_id"], each
        )
        for each in terraform.instances(terraform.resources["google_service_account.function"])
    }
    assert functions == {f"dispatcher-{n}" for n in FUNCTION_NAMES}
    for account in functions:
        assert {g[1] for g in granted if g[0] == account} == {
            g[1] for g in documented if g[0] == account
        }


def test_functions_publish_only_to_their_own_dead_letter_topic_select_to_due_and_events(
    terraform: Terraform, topology: dict[str, Any]
) -> None:
    published = {
        (principal, name)
        for principal, role, kind, name in terraform_grants(terraform)
        if role == "roles/pubsub.publisher" and principal.startswith("dispatcher-")
    }
    expected = {
        (f"dispatcher-{spec['push']['function']}", spec["dead_letter"]["topic"])
        for spec in topology["topics"].values()
    } | {("dispatcher-select", "dispatcher-due")}
    expected |= {
        (f"dispatcher-{spec['publisher']}", name)
        for name, spec in (topology.get("events") or {}).items()
    }
    # run-completed became a topic when plan-deliveries started consuming it; results still
    # publishes it (terraform/deliveries.tf).
    expected |= {("dispatcher-results", "dispatcher-run-completed")}
    assert published == expected


def test_dead_lettering_has_the_pubsub_agent_grants_it_needs(
    terraform: Terraform, topology: dict[str, Any]
) -> None:
    granted = terraform_grants(terraform)
    for spec in topology["topics"].values():
        dlq = spec["dead_letter"]["topic"]
        source = spec["push"]["subscription"]
        assert (PUBSUB_AGENT, "roles/pubsub.publisher", "topic", dlq) in granted
        assert (PUBSUB_AGENT, "roles/pubsub.subscriber", "subscription", source) in granted


def test_no_primitive_roles_anywhere() -> None:
    for path in [*TERRAFORM.rglob("*.tf"), *TERRAFORM.rglob("*.tfvars"), ROOT / "deploy.sh"]:
        found = PRIMITIVE.search(path.read_text())
        assert found is None, f"{path}: primitive role {found.group(0) if found else ''}"
    for resource in resources().values():
        role = resource.body.get("role")
        if role is not None:
            assert not PRIMITIVE.fullmatch(role), resource.address
