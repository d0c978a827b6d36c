# Email deliveries (docs/deliveries.md): the email queue, the deliver function (an HTTP target of
# Cloud Tasks, not a push target, hence not in local.function_topics), its identities, the SMTP
# password secret and the grants between them. Every grant is a row of the README role table.

variable "email_queue_name" {
  description = "Name of the email queue ([email] queue in app.toml; a test checks)."
  type        = string
  default     = "email-deliveries"
}

variable "email_queue" {
  description = "Limits of the email queue; must equal [email] in app.toml + app.<env>.toml (a test checks)."
  type = object({
    max_dispatches_per_second = number
    max_concurrent_dispatches = number
    max_attempts              = number
    min_backoff_seconds       = number
    max_backoff_seconds       = number
    max_doublings             = number
  })
  default = {
    max_dispatches_per_second = 5
    max_concurrent_dispatches = 10
    max_attempts              = 20
    min_backoff_seconds       = 5
    max_backoff_seconds       = 300
    max_doublings             = 4
  }
}

variable "smtp_password_secret_id" {
  description = "Secret Manager secret (created at bootstrap) whose latest version is the SMTP relay password."
  type        = string
  default     = "dispatcher-smtp-password"
}

variable "deliver_function" {
  description = "Runtime sizing of the deliver function. One request per instance at a time keeps one SMTP conversation per instance."
  type = object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    min_instances   = number
    max_instances   = number
    concurrency     = number
  })
  default = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 10, concurrency = 1 }

  validation {
    # Its ledger pool holds one connection (local.deliver_pool_max_size), counted per instance.
    condition     = var.deliver_function.concurrency == 1
    error_message = "deliver_function.concurrency must be 1: one SMTP conversation and one ledger connection per instance."
  }
}

resource "google_cloud_tasks_queue" "email" {
  name     = var.email_queue_name
  location = var.tasks_location

  # Its own rate limit: the relay's sending limits, whatever the collection queues do.
  rate_limits {
    max_dispatches_per_second = var.email_queue.max_dispatches_per_second
    max_concurrent_dispatches = var.email_queue.max_concurrent_dispatches
  }

  # 4xx and connection errors are answered 503 and retried with this backoff; 5xx are final (200).
  retry_config {
    max_attempts  = var.email_queue.max_attempts
    min_backoff   = "${var.email_queue.min_backoff_seconds}s"
    max_backoff   = "${var.email_queue.max_backoff_seconds}s"
    max_doublings = var.email_queue.max_doublings
  }

  stackdriver_logging_config {
    sampling_ratio = var.tasks_log_sampling_ratio
  }
}

# Runtime identity of the deliver function.
resource "google_service_account" "deliver" {
  account_id   = "dispatcher-deliver"
  display_name = "dispatcher deliver function (${var.environment})"
  description  = "Runtime identity of the deliver Cloud Function."
}

# Cloud Tasks signs the OIDC token of every email task as this account; the function checks it
# ([email] service_account in app.<env>.toml) and Cloud Run lets only it invoke the function.
resource "google_service_account" "email_invoker" {
  account_id   = "email-invoker"
  display_name = "email task invoker (${var.environment})"
  description  = "Identity in the OIDC token of Cloud Tasks sent to the deliver function."
}

resource "google_storage_bucket_object" "deliver_source" {
  bucket = google_storage_bucket.sources.name
  name   = "functions/deliver-${filemd5("${local.source_dir}/deliver.zip")}.zip"
  source = "${local.source_dir}/deliver.zip"
}

resource "google_cloudfunctions2_function" "deliver" {
  name        = "dispatcher-deliver"
  location    = var.region
  description = "HTTP target of the ${var.email_queue_name} Cloud Tasks queue: sends one email per task."

  build_config {
    runtime           = "python311"
    entry_point       = "handle"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.deliver_source.name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.deliver.email
    available_memory                 = var.deliver_function.memory
    available_cpu                    = var.deliver_function.cpu
    timeout_seconds                  = var.deliver_function.timeout_seconds
    min_instance_count               = var.deliver_function.min_instances
    max_instance_count               = var.deliver_function.max_instances
    max_instance_request_concurrency = var.deliver_function.concurrency
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true

    environment_variables = {
      GOOGLE_CLOUD_PROJECT = var.project_id
      DISPATCHER_ENV       = var.environment
      LOG_EXECUTION_ID     = "true"
    }

    # Read from Secret Manager when an instance starts; never in state, tfvars or the archive.
    secret_environment_variables {
      key        = "DATABASE_URL"
      project_id = var.project_id
      secret     = var.database_url_secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "DISPATCHER_SMTP_PASSWORD"
      project_id = var.project_id
      secret     = var.smtp_password_secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.deliver_reads_database_url,
    google_secret_manager_secret_iam_member.deliver_reads_smtp_password,
    google_project_iam_member.build_writes_logs,
    google_project_iam_member.build_reads_sources,
    google_artifact_registry_repository_iam_member.build_pushes_images,
  ]
}

resource "google_cloud_run_service_iam_member" "email_invoker_invokes_deliver" {
  project  = var.project_id
  location = google_cloudfunctions2_function.deliver.location
  service  = google_cloudfunctions2_function.deliver.name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.email_invoker.email}"
}

resource "google_secret_manager_secret_iam_member" "deliver_reads_database_url" {
  project   = var.project_id
  secret_id = var.database_url_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.deliver.email}"
}

resource "google_secret_manager_secret_iam_member" "deliver_reads_smtp_password" {
  project   = var.project_id
  secret_id = var.smtp_password_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.deliver.email}"
}

# The function re-reads the subscription before sending (deleted, delivery or recipient removed).
resource "google_project_iam_member" "deliver_datastore_viewer" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:${google_service_account.deliver.email}"
}

# --- plan-deliveries: run-completed in, one email task per recipient out ------------------------
# Its push subscription, dead-letter topic, runtime account, DATABASE_URL secret and the push
# invoker's grant come from topics.yaml like every push function's; these are its own.

# dispatcher-run-completed moved from topics.yaml `events` to `topics` when it got its consumer.
moved {
  from = google_pubsub_topic.event["dispatcher-run-completed"]
  to   = google_pubsub_topic.topic["dispatcher-run-completed"]
}

# results publishes the event (the `events` grant covered it while it was an event).
resource "google_pubsub_topic_iam_member" "results_publishes_run_completed" {
  topic  = google_pubsub_topic.topic["dispatcher-run-completed"].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function["results"].email}"
}

resource "google_project_iam_member" "plan_deliveries_datastore_viewer" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:${google_service_account.function["plan-deliveries"].email}"
}

resource "google_cloud_tasks_queue_iam_member" "plan_deliveries_enqueues_email" {
  project  = var.project_id
  location = google_cloud_tasks_queue.email.location
  name     = google_cloud_tasks_queue.email.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.function["plan-deliveries"].email}"
}

# Creating a task with an OIDC token for an account needs iam.serviceAccounts.actAs on it.
resource "google_service_account_iam_member" "plan_deliveries_acts_as_email_invoker" {
  service_account_id = google_service_account.email_invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function["plan-deliveries"].email}"
}

# --- select: scheduled digests on the tick (shared/usecases/select_digests.py) --------------------
# select reads and advances delivery_schedules with its datastore.user grant (iam.tf); its due
# query (next_run_at <= now, ordered by next_run_at) and the admin's per-subscription query are
# served by Firestore's automatic single-field indexes, so there is no composite index for them.
# It plans the digest emails itself, without a ledger claim (no DATABASE_URL: its instances do
# not fit the database's connection budget), so it needs only these two grants.

resource "google_cloud_tasks_queue_iam_member" "select_enqueues_email" {
  project  = var.project_id
  location = google_cloud_tasks_queue.email.location
  name     = google_cloud_tasks_queue.email.name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.function["select"].email}"
}

resource "google_service_account_iam_member" "select_acts_as_email_invoker" {
  service_account_id = google_service_account.email_invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function["select"].email}"
}
