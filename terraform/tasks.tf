# One Cloud Tasks queue per source kind. The settings come from the environment's tfvars, which a
# test keeps equal to [queues.<kind>] in app.toml + app.<env>.toml (Terraform has no TOML decoder).
resource "google_cloud_tasks_queue" "queue" {
  for_each = var.queues

  name     = each.value.name
  location = var.tasks_location

  rate_limits {
    max_dispatches_per_second = each.value.max_dispatches_per_second
    max_concurrent_dispatches = each.value.max_concurrent_dispatches
  }

  retry_config {
    max_attempts  = each.value.max_attempts
    min_backoff   = "${each.value.min_backoff_seconds}s"
    max_backoff   = "${each.value.max_backoff_seconds}s"
    max_doublings = each.value.max_doublings
  }

  stackdriver_logging_config {
    sampling_ratio = var.tasks_log_sampling_ratio
  }
}
