"""terraform/deliveries.tf against app.toml [email] and the deliver function's needs."""

from __future__ import annotations

from shared.email_settings import load_email_settings
from tests.unit.deploy.hcl import ROOT, resources, tfvars, variables


def test_email_queue_equals_the_email_settings_of_each_environment(environment: str) -> None:
    queue = {**variables()["email_queue"]["default"], **tfvars(environment).get("email_queue", {})}
    email = load_email_settings(
        # smtp_user is set in deployed environments; the password comes from the secret.
        environ={"DISPATCHER_ENV": environment, "DISPATCHER_SMTP_PASSWORD": "x"},
        config_dir=ROOT,
    )
    name = tfvars(environment).get("email_queue_name", variables()["email_queue_name"]["default"])
    assert name == email.queue
    assert queue == {
        "max_dispatches_per_second": email.max_dispatches_per_second,
        "max_concurrent_dispatches": email.max_concurrent_dispatches,
        "max_attempts": email.max_attempts,
        "min_backoff_seconds": email.min_backoff_seconds,
        "max_backoff_seconds": email.max_backoff_seconds,
        "max_doublings": email.max_doublings,
    }
    assert email.smtp_tls == "starttls" and email.deliver_url.startswith("https://")
    assert email.service_account.startswith("email-invoker@")


def test_deliver_function_gets_both_secrets_and_runs_as_its_own_account() -> None:
    function = resources()["google_cloudfunctions2_function.deliver"]
    service = function.block("service_config")
    secrets = {s["key"]: s["secret"] for s in service["secret_environment_variables"]}
    assert secrets == {
        "DATABASE_URL": "${var.database_url_secret_id}",
        "DISPATCHER_SMTP_PASSWORD": "${var.smtp_password_secret_id}",
    }
    assert service["service_account_email"] == "${google_service_account.deliver.email}"
    assert (ROOT / "functions" / "deliver" / "main.py").is_file()
    invoker = resources()["google_cloud_run_service_iam_member.email_invoker_invokes_deliver"]
    assert invoker.body["member"] == "serviceAccount:${google_service_account.email_invoker.email}"
