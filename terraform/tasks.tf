# Cloud Tasks queues: one per source kind, or `shards` of them. The settings come from the
# environment's tfvars, which a test keeps equal to [queues.<kind>] in app.toml + app.<env>.toml
# (Terraform has no TOML decoder).
#
# A queue dispatches at most 500 tasks/s, so a kind that needs more is sharded: fanout puts each
# task on the shard its dispatch key hashes to (shared/dispatch_key.py shard_of). The kind's
# max_dispatches_per_second / max_concurrent_dispatches are its totals, split evenly over the
# shards exactly as shared/config.py QueueConfig.shard_rate / shard_concurrency do for the local
# stack. Shard 0 keeps the kind as its key and the kind's queue name, so sharding a deployed kind
# adds queues and never replaces the one holding in-flight tasks. Never lower `shards` while tasks
# are in flight (outcomes.lost_after_minutes): the removed queues would be destroyed with them.
locals {
  queue_shards = merge([
    for kind, queue in var.queues : {
      for shard in range(queue.shards) : (shard == 0 ? kind : "${kind}-${shard}") => {
        kind                      = kind
        shard                     = shard
        name                      = shard == 0 ? queue.name : "${queue.name}-${shard}"
        max_dispatches_per_second = queue.max_dispatches_per_second / queue.shards
        max_concurrent_dispatches = ceil(queue.max_concurrent_dispatches / queue.shards)
        max_attempts              = queue.max_attempts
        min_backoff_seconds       = queue.min_backoff_seconds
        max_backoff_seconds       = queue.max_backoff_seconds
        max_doublings             = queue.max_doublings
      }
    }
  ]...)
}

resource "google_cloud_tasks_queue" "queue" {
  for_each = local.queue_shards

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
