# Gen2 Cloud Functions, one per push target in topics.yaml. deploy.sh builds one archive per
# function (functions/<name>/main.py as main.py, the shared/ package, schemas/, topics.yaml,
# app*.toml and requirements.txt); the object name carries the archive's hash so a changed source
# redeploys and an unchanged one does not.

resource "google_storage_bucket" "sources" {
  name                        = "${var.project_id}-dispatcher-sources"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false
}

resource "google_storage_bucket_object" "source" {
  for_each = local.function_topics

  bucket = google_storage_bucket.sources.name
  name   = "functions/${each.key}-${filemd5("${local.source_dir}/${each.key}.zip")}.zip"
  source = "${local.source_dir}/${each.key}.zip"
}

resource "google_artifact_registry_repository" "functions" {
  location      = var.region
  repository_id = "dispatcher-functions"
  format        = "DOCKER"
  description   = "Images of the dispatcher functions."
}

resource "google_cloudfunctions2_function" "function" {
  for_each = local.function_topics

  name        = "dispatcher-${each.key}"
  location    = var.region
  description = "Push target of ${each.value} (topics.yaml)."

  build_config {
    runtime           = "python311"
    entry_point       = "handle"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.functions.id

    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.source[each.key].name
      }
    }
  }

  service_config {
    service_account_email            = google_service_account.function[each.key].email
    available_memory                 = var.functions[each.key].memory
    available_cpu                    = var.functions[each.key].cpu
    timeout_seconds                  = var.functions[each.key].timeout_seconds
    min_instance_count               = var.functions[each.key].min_instances
    max_instance_count               = var.functions[each.key].max_instances
    max_instance_request_concurrency = var.functions[each.key].concurrency
    ingress_settings                 = var.ingress_settings
    all_traffic_on_latest_revision   = true

    # shared/config.py: DISPATCHER_ENV selects app.<env>.toml; push-token verification is on in
    # every deployed environment whatever the toml says. The expected token identity is
    # push_auth.service_account (checked against google_service_account.push by the tests); the
    # expected audience is this function's own URL, which Terraform cannot pass to the function
    # itself without a cycle (see push_config below).
    environment_variables = {
      GOOGLE_CLOUD_PROJECT        = var.project_id
      DISPATCHER_ENV              = var.environment
      DISPATCHER_PUSH_AUTH_VERIFY = "true"
      LOG_EXECUTION_ID            = "true"
      # functions-framework's gunicorn runs 4 threads per vCPU unless told: one thread per
      # concurrent request, or the extra concurrency only queues inside the instance.
      THREADS = tostring(var.functions[each.key].concurrency)
    }

    # Read from Secret Manager when an instance starts; never in state, tfvars or the archive.
    dynamic "secret_environment_variables" {
      for_each = contains(local.database_functions, each.key) ? ["DATABASE_URL"] : []
      content {
        key        = secret_environment_variables.value
        project_id = var.project_id
        secret     = var.database_url_secret_id
        version    = "latest"
      }
    }
  }

  # Every instance of every ledger function may hold a full pool: together they must fit in the
  # database's connection budget, or a burst fails on "too many clients" instead of queueing.
  # The sizing comes from the capacity model (bench/capacity.py, docs/capacity.md).
  lifecycle {
    precondition {
      condition     = sum([for name in local.database_functions : var.functions[name].max_instances]) * var.ledger_pool_max_size + var.deliver_function.max_instances * local.deliver_pool_max_size <= var.database_max_connections - var.database_reserved_connections
      error_message = "Σ max_instances of the ledger functions x ledger_pool_max_size, plus the deliver function's instances x its pool, exceeds database_max_connections - database_reserved_connections: lower instances or the pool, or raise the database's max_connections."
    }
  }

  # The runtime identity must be able to read the secret before the first revision starts.
  depends_on = [
    google_secret_manager_secret_iam_member.function_reads_database_url,
    google_project_iam_member.build_writes_logs,
    google_project_iam_member.build_reads_sources,
    google_artifact_registry_repository_iam_member.build_pushes_images,
  ]
}
