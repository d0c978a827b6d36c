# The `scheduler` jobs of topics.yaml (the local stack's stand-in publishes the same ones).
# Pub/Sub targets publish as the Cloud Scheduler service agent, which holds
# roles/cloudscheduler.serviceAgent from the moment the API is enabled: no account of ours needed.
resource "google_cloud_scheduler_job" "job" {
  for_each = local.scheduler_jobs

  name        = "dispatcher-${each.key}"
  description = "Publishes ${jsonencode(each.value.message)} to ${each.value.topic} (topics.yaml scheduler.${each.key})."
  region      = var.region
  schedule    = each.value.cron
  time_zone   = each.value.timezone
  paused      = var.scheduler_paused

  retry_config {
    retry_count          = var.scheduler_retry.retry_count
    min_backoff_duration = "${var.scheduler_retry.min_backoff_seconds}s"
    max_backoff_duration = "${var.scheduler_retry.max_backoff_seconds}s"
    max_doublings        = var.scheduler_retry.max_doublings
    max_retry_duration   = "${var.scheduler_retry.max_retry_duration_s}s"
  }

  pubsub_target {
    topic_name = google_pubsub_topic.topic[each.value.topic].id
    data       = base64encode(jsonencode(each.value.message))
    attributes = {
      origin = "cloud-scheduler"
      job    = each.key
    }
  }
}
