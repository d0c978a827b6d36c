# topics.yaml is the single source of truth for the messaging topology: topics, dead-letter
# topics, push and operator subscriptions and scheduler jobs are all for_each'd over it here, and
# tests/unit/deploy cross-checks the result, so nothing in this directory repeats a topic name
# except the few grants that name one topic on purpose (see iam.tf).
locals {
  topology = yamldecode(file("${path.module}/../topics.yaml"))

  # topic name => its topics.yaml entry (push, dead_letter, ...)
  topics = local.topology.topics

  # function name => the topic that pushes to it (topics.yaml allows one topic per function).
  function_topics = { for topic, spec in local.topics : spec.push.function => topic }

  scheduler_jobs = local.topology.scheduler

  # Event topic name => its topics.yaml entry (publisher function, tap subscription).
  events = try(local.topology.events, {})

  # Dead-letter topics keep messages for operators; a subscription retains at most 7 days.
  dead_letter_retention_seconds = local.topology.dead_letter_retention_days * 86400
  dead_letter_subscription_retention_seconds = min(
    local.topology.dead_letter_retention_days, 7
  ) * 86400

  # The functions that talk to the PostgreSQL ledger: only they get DATABASE_URL and may read
  # the secret (select works on Firestore and Pub/Sub alone).
  database_functions = toset(["fanout", "maintenance", "sync", "results", "plan-deliveries"])

  # The deliver function (deliveries.tf) talks to the ledger too, one request per instance at a
  # time on a pool of this size (shared/deliver_http.py DELIVER_POOL_MAX_SIZE).
  deliver_pool_max_size = 1

  # The functions that create Cloud Tasks (fanout: one task per source; maintenance: reconcile
  # re-creates tasks the ledger says are missing). They enqueue and act as the collector invoker.
  task_functions = toset(["fanout", "maintenance"])

  source_dir = var.function_source_dir != "" ? var.function_source_dir : "${path.module}/../build/functions"

  # Google-managed service agents that act on our behalf.
  pubsub_service_agent = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
}

data "google_project" "this" {
  project_id = var.project_id
}
