"""terraform/ against its sources of truth: topics.yaml, app*.toml, the functions, the due query."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shared.deliver_http import DELIVER_POOL_MAX_SIZE
from shared.topology import FUNCTION_NAMES
from tests.unit.deploy.conftest import app_settings
from tests.unit.deploy.hcl import (
    ROOT,
    TERRAFORM,
    Resource,
    Terraform,
    load_hcl,
    locals_,
    queue_shards,
    resources,
    squash,
    tfvars,
    variables,
)

# The due query (select): equality on shard, status, paused; range and order on next_run_at.
DUE_QUERY_FIELDS = ["shard", "status", "paused", "next_run_at"]


def resource(address: str) -> Resource:
    found = resources().get(address)
    assert found is not None, f"terraform/ declares no {address}"
    return found


# --- syntax -----------------------------------------------------------------------------------


def test_terraform_fmt_is_clean() -> None:
    if shutil.which("terraform") is None:
        pytest.skip(
            "terraform is not installed (CI installs it; `terraform fmt` needs no providers)"
        )
    result = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-list=true", str(TERRAFORM)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"files need `terraform fmt`: {result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    "path",
    sorted(TERRAFORM.rglob("*.tf"))
    + sorted(TERRAFORM.rglob("*.tfvars"))
    + sorted(TERRAFORM.rglob("*.hcl")),
    ids=lambda p: str(Path(p).relative_to(TERRAFORM)),
)
def test_every_file_parses(path: Path) -> None:
    assert load_hcl(path), f"{path} parsed to nothing"


# --- derived from topics.yaml -----------------------------------------------------------------


def test_locals_derive_the_topology_from_topics_yaml() -> None:
    values = locals_()
    assert squash(values["topology"]) == squash(
        '${yamldecode(file("${path.module}/../topics.yaml"))}'
    )
    assert values["topics"] == "${local.topology.topics}"
    assert values["scheduler_jobs"] == "${local.topology.scheduler}"
    assert squash(values["function_topics"]) == squash(
        "${{for topic, spec in local.topics : spec.push.function => topic}}"
    )
    assert "local.topology.dead_letter_retention_days" in values["dead_letter_retention_seconds"]


def test_every_topic_has_a_topic_and_a_dead_letter_topic(
    terraform: Terraform, topology: dict[str, Any]
) -> None:
    topics = resource("google_pubsub_topic.topic")
    dlqs = resource("google_pubsub_topic.dead_letter")
    names = {
        terraform.value(topics.body["name"], each) for each in terraform.instances(topics) if each
    }
    dlq_names = {
        terraform.value(dlqs.body["name"], each) for each in terraform.instances(dlqs) if each
    }
    assert names == set(topology["topics"])
    assert dlq_names == {spec["dead_letter"]["topic"] for spec in topology["topics"].values()}
    assert (
        squash(dlqs.body["message_retention_duration"]) == "${local.dead_letter_retention_seconds}s"
    )


def test_every_topic_has_a_push_subscription_with_oidc_retry_and_dead_letter_policy(
    terraform: Terraform, topology: dict[str, Any]
) -> None:
    push = resource("google_pubsub_subscription.push")
    seen = set()
    for each in terraform.instances(push):
        assert each is not None
        topic, spec = each
        body = push.body
        assert terraform.value(body["name"], each) == spec["push"]["subscription"]
        assert terraform.value(body["topic"], each) == topic
        assert terraform.value(body["ack_deadline_seconds"], each) == str(
            spec["push"]["ack_deadline_seconds"]
        )

        config = push.block("push_config")
        endpoint = config["push_endpoint"]
        function = spec["push"]["function"]
        function_ref = "google_cloudfunctions2_function.function[each.value.push.function]"
        assert endpoint == "${" + function_ref + ".service_config[0].uri}"
        assert terraform.value(endpoint, each) == f"dispatcher-{function}"
        oidc = config["oidc_token"]
        assert len(oidc) == 1, "push_config needs exactly one oidc_token block"
        assert oidc[0]["audience"] == endpoint, (
            "the audience must be the function URL Cloud Run checks"
        )
        assert terraform.value(oidc[0]["service_account_email"], each) == "pubsub-push"

        retry = push.block("retry_policy")
        assert (
            terraform.value(retry["minimum_backoff"], each)
            == f"{spec['push']['retry']['min_backoff_seconds']}s"
        )
        assert (
            terraform.value(retry["maximum_backoff"], each)
            == f"{spec['push']['retry']['max_backoff_seconds']}s"
        )

        dead_letter = push.block("dead_letter_policy")
        assert (
            terraform.value(dead_letter["dead_letter_topic"], each) == spec["dead_letter"]["topic"]
        )
        assert terraform.value(dead_letter["max_delivery_attempts"], each) == str(
            spec["push"]["max_delivery_attempts"]
        )
        assert push.block("expiration_policy")["ttl"] == ""
        seen.add(topic)
    assert seen == set(topology["topics"])
    assert (
        "${google_pubsub_topic_iam_member.pubsub_agent_publishes_dead_letters}"
        in push.body["depends_on"]
    )


def test_every_dead_letter_topic_has_an_operator_pull_subscription(
    terraform: Terraform, topology: dict[str, Any]
) -> None:
    pull = resource("google_pubsub_subscription.dead_letter")
    assert "push_config" not in pull.body, "operators pull dead letters"
    found = {
        terraform.value(pull.body["name"], each): terraform.value(pull.body["topic"], each)
        for each in terraform.instances(pull)
    }
    assert found == {
        s["dead_letter"]["subscription"]: s["dead_letter"]["topic"]
        for s in topology["topics"].values()
    }
    assert pull.block("expiration_policy")["ttl"] == ""


def test_scheduler_jobs_come_from_topics_yaml_with_time_zone_and_retry(
    terraform: Terraform, topology: dict[str, Any]
) -> None:
    job = resource("google_cloud_scheduler_job.job")
    assert job.body["schedule"] == "${each.value.cron}"
    assert job.body["time_zone"] == "${each.value.timezone}"
    published = {}
    for each in terraform.instances(job):
        assert each is not None
        target = job.block("pubsub_target")
        published[each[0]] = terraform.value(target["topic_name"], each)
        assert each[1]["timezone"], f"scheduler.{each[0]} has no time zone"
    assert published == {name: spec["topic"] for name, spec in topology["scheduler"].items()}
    assert topology["scheduler"]["tick"] == {
        "topic": "dispatcher-ticks",
        "cron": "* * * * *",
        "timezone": "Etc/UTC",
        "message": {},
    }
    retry = job.block("retry_config")
    assert set(retry) == {
        "retry_count",
        "min_backoff_duration",
        "max_backoff_duration",
        "max_doublings",
        "max_retry_duration",
    }
    defaults = variables()["scheduler_retry"]["default"]
    assert defaults["max_retry_duration_s"] < 60, "a tick must stop retrying before the next one"


# --- functions --------------------------------------------------------------------------------


def test_one_function_per_push_target_with_its_own_service_account(
    terraform: Terraform, topology: dict[str, Any]
) -> None:
    function = resource("google_cloudfunctions2_function.function")
    targets = {spec["push"]["function"] for spec in topology["topics"].values()}
    assert {each[0] for each in terraform.instances(function) if each} == targets
    assert targets == set(FUNCTION_NAMES)
    for name in targets:
        assert (ROOT / "functions" / name / "main.py").is_file(), (
            f"functions/{name}/main.py is missing"
        )
    build = function.block("build_config")
    assert build["runtime"] == "python311"
    assert build["entry_point"] == "handle"
    service = function.block("service_config")
    for each in terraform.instances(function):
        assert each is not None
        assert terraform.value(service["service_account_email"], each) == f"dispatcher-{each[0]}"
    sizes = variables()["functions"]["default"]
    assert set(sizes) == targets
    for environment in ("staging", "production"):
        assert set(tfvars(environment).get("functions", sizes)) == targets


def test_functions_get_environment_push_verification_and_the_secret() -> None:
    function = resource("google_cloudfunctions2_function.function")
    service = function.block("service_config")
    env = service["environment_variables"]
    assert env["DISPATCHER_ENV"] == "${var.environment}"
    assert env["GOOGLE_CLOUD_PROJECT"] == "${var.project_id}"
    assert env["DISPATCHER_PUSH_AUTH_VERIFY"] == "true"
    assert "DATABASE_URL" not in env, "the database URL comes from Secret Manager only"
    dynamic = service["dynamic"]
    assert len(dynamic) == 1
    secret = dynamic[0]["secret_environment_variables"]
    assert squash(secret["for_each"]) == squash(
        '${contains(local.database_functions, each.key) ? ["DATABASE_URL"] : []}'
    )
    content = secret["content"][0]
    assert content["secret"] == "${var.database_url_secret_id}"
    assert content["version"] == "latest"
    # The functions that get the secret are exactly those allowed to read it.
    grant = resource("google_secret_manager_secret_iam_member.function_reads_database_url")
    assert grant.body["for_each"] == "${local.database_functions}"


# --- queues and app configuration -------------------------------------------------------------


def test_every_configured_queue_exists_with_the_same_limits(environment: str) -> None:
    settings = app_settings(environment)
    declared = tfvars(environment)["queues"]
    assert set(declared) == set(settings.queues), f"{environment}.tfvars queues vs [queues.<kind>]"
    for kind, queue in settings.queues.items():
        spec = declared[kind]
        assert spec["name"] == queue.name
        assert int(spec.get("shards", 1)) == queue.shards, f"{environment}: queue {kind} shards"
        for field in (
            "max_dispatches_per_second",
            "max_concurrent_dispatches",
            "max_attempts",
            "min_backoff_seconds",
            "max_backoff_seconds",
            "max_doublings",
        ):
            assert math.isclose(float(spec[field]), float(getattr(queue, field))), (
                f"{environment}: queue {kind} {field}: tfvars {spec[field]} != app config "
                f"{getattr(queue, field)}"
            )


# The expression of local.queue_shards that tests/unit/deploy/hcl.py queue_shards() mirrors.
QUEUE_SHARDS_EXPRESSION = """${merge([for kind, queue in var.queues : {
  for shard in range(queue.shards) : (shard == 0 ? kind : "${kind}-${shard}") => {
    kind = kind, shard = shard,
    name = shard == 0 ? queue.name : "${queue.name}-${shard}",
    max_dispatches_per_second = queue.max_dispatches_per_second / queue.shards,
    max_concurrent_dispatches = ceil(queue.max_concurrent_dispatches / queue.shards),
    max_attempts = queue.max_attempts, min_backoff_seconds = queue.min_backoff_seconds,
    max_backoff_seconds = queue.max_backoff_seconds, max_doublings = queue.max_doublings}}]...)}"""


def test_shard_queues_are_the_ones_the_stack_creates_with_the_same_split_limits(
    environment: str,
) -> None:
    """Terraform and shared/tasks_admin.py (the local stack) create the same shard queues with
    the same per-queue limits: the kind's totals split evenly, shard 0 under the kind's name."""
    assert squash(str(locals_()["queue_shards"])) == squash(QUEUE_SHARDS_EXPRESSION)
    settings = app_settings(environment)
    shards = queue_shards(tfvars(environment)["queues"])
    expected = {
        path.rsplit("/", 1)[-1]: queue
        for queue in settings.queues.values()
        for path in settings.queue_paths(queue.kind)
    }
    assert {s["name"] for s in shards.values()} == set(expected)
    for key, shard in shards.items():
        queue = expected[shard["name"]]
        assert key == (queue.kind if shard["shard"] == 0 else f"{queue.kind}-{shard['shard']}")
        assert math.isclose(shard["max_dispatches_per_second"], queue.shard_rate())
        assert shard["max_dispatches_per_second"] <= 500, "Cloud Tasks' per-queue maximum"
        assert shard["max_concurrent_dispatches"] == queue.shard_concurrency()
    # Shard 0 keeps the pre-sharding resource address: no kind's queue is ever replaced.
    assert set(settings.queues) <= set(shards)


def test_queue_resource_uses_every_queue_setting() -> None:
    queue = resource("google_cloud_tasks_queue.queue")
    assert queue.body["for_each"] == "${local.queue_shards}"
    assert queue.body["name"] == "${each.value.name}"
    assert queue.body["location"] == "${var.tasks_location}"
    rate = queue.block("rate_limits")
    retry = queue.block("retry_config")
    assert rate == {
        "max_dispatches_per_second": "${each.value.max_dispatches_per_second}",
        "max_concurrent_dispatches": "${each.value.max_concurrent_dispatches}",
    }
    assert retry == {
        "max_attempts": "${each.value.max_attempts}",
        "min_backoff": "${each.value.min_backoff_seconds}s",
        "max_backoff": "${each.value.max_backoff_seconds}s",
        "max_doublings": "${each.value.max_doublings}",
    }


def test_tfvars_agree_with_the_app_configuration(environment: str) -> None:
    settings = app_settings(environment)
    values = tfvars(environment)
    assert values["environment"] == environment
    assert values["project_id"] == settings.project
    assert values["region"] == settings.region
    assert values["tasks_location"] == settings.tasks_location
    push_id = resource("google_service_account.push").body["account_id"]
    invoker_id = resource("google_service_account.collector_invoker").body["account_id"]
    domain = f"{settings.project}.iam.gserviceaccount.com"
    assert settings.push_auth_service_account == f"{push_id}@{domain}"
    assert settings.collector_service_account == f"{invoker_id}@{domain}"
    assert settings.push_auth_verify, f"app.{environment}.toml must verify push tokens"


def test_tfvars_set_every_required_variable_and_nothing_undeclared(environment: str) -> None:
    declared = variables()
    required = {name for name, spec in declared.items() if "default" not in spec}
    values = tfvars(environment)
    assert required <= set(values), f"{environment}.tfvars lacks {sorted(required - set(values))}"
    assert set(values) <= set(declared), f"undeclared: {sorted(set(values) - set(declared))}"


def test_backend_configuration_per_environment(environment: str) -> None:
    backend = load_hcl(TERRAFORM / "environments" / f"{environment}.backend.hcl")
    assert backend["bucket"] and backend["prefix"].endswith(environment)


# --- Firestore --------------------------------------------------------------------------------


def test_due_query_index_matches_the_query_fields() -> None:
    index = resource("google_firestore_index.due_query")
    assert index.body["collection"] == "subscriptions"
    assert index.body["query_scope"] == "COLLECTION"
    fields = index.body["fields"]
    assert [f["field_path"] for f in fields] == DUE_QUERY_FIELDS
    assert {f["order"] for f in fields} == {"ASCENDING"}


def test_the_due_query_uses_the_indexed_fields_in_index_order() -> None:
    """shared/dal/due_query.py's query: equalities in index order, then the range field."""
    source = (ROOT / "shared" / "dal" / "due_query.py").read_text()
    filters = re.findall(r'FieldFilter\("([a-z_]+)", "([=<>!]+)"', source)
    order_by = re.findall(r'\.order_by\("([a-z_]+)"', source)
    equalities = [field for field, op in filters if op == "=="]
    ranges = [field for field, op in filters if op != "=="]
    assert equalities + ranges == DUE_QUERY_FIELDS
    assert ranges == order_by == DUE_QUERY_FIELDS[-1:]


# --- the ledger's connection budget ----------------------------------------------------------


def test_ledger_functions_fit_the_database_connection_budget(environment: str) -> None:
    """Σ over the functions that use the ledger of max_instances x pool_max_size must fit in
    database_max_connections - database_reserved_connections: every instance may hold a full
    pool at the peak of a burst, and PostgreSQL refuses the connection past its limit."""
    values = tfvars(environment)
    declared = variables()
    settings = app_settings(environment)
    assert values["ledger_pool_max_size"] == settings.ledger_pool_max_size, (
        f"{environment}.tfvars ledger_pool_max_size != [ledger] pool_max_size"
    )
    functions = values.get("functions", declared["functions"]["default"])
    database = Terraform({"topics": {}, "scheduler": {}}, values).set_local("database_functions")
    reserved = values.get(
        "database_reserved_connections", declared["database_reserved_connections"]["default"]
    )
    budget = values["database_max_connections"] - reserved
    deliver = values.get("deliver_function", declared["deliver_function"]["default"])
    assert deliver["concurrency"] == 1, "deliver's pool of one serves one request at a time"
    used = (
        sum(functions[name]["max_instances"] for name in database) * settings.ledger_pool_max_size
        + deliver["max_instances"] * DELIVER_POOL_MAX_SIZE
    )
    assert used <= budget, f"{environment}: {used} connections > budget {budget}"
    for name in database:
        # A request holds one connection at a time: a smaller pool would make requests wait.
        assert functions[name]["concurrency"] <= settings.ledger_pool_max_size, name


def test_terraform_checks_the_connection_budget_and_threads_follow_concurrency() -> None:
    function = resource("google_cloudfunctions2_function.function")
    precondition = function.body["lifecycle"][0]["precondition"][0]
    assert squash(precondition["condition"]) == squash(
        "${sum([for name in local.database_functions : var.functions[name].max_instances])"
        " * var.ledger_pool_max_size"
        " + var.deliver_function.max_instances * local.deliver_pool_max_size"
        " <= var.database_max_connections - var.database_reserved_connections}"
    )
    # The pool Terraform counts for deliver is the pool the deliver function opens.
    assert locals_()["deliver_pool_max_size"] == DELIVER_POOL_MAX_SIZE
    env = function.block("service_config")["environment_variables"]
    assert env["THREADS"] == "${tostring(var.functions[each.key].concurrency)}"
