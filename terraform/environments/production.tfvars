# Production. Every value here must agree with app.toml + app.production.toml (tests/unit/deploy
# checks project, region, tasks location and every queue).
project_id     = "dispatcher-production"
environment    = "production"
region         = "europe-west1"
tasks_location = "europe-west1"

queues = {
  rss = {
    name                      = "collect-rss"
    max_dispatches_per_second = 200
    max_concurrent_dispatches = 500
    max_attempts              = 5
    min_backoff_seconds       = 5
    max_backoff_seconds       = 300
    max_doublings             = 4
  }
  news-api = {
    name                      = "collect-news-api"
    max_dispatches_per_second = 10
    max_concurrent_dispatches = 20
    max_attempts              = 5
    min_backoff_seconds       = 10
    max_backoff_seconds       = 600
    max_doublings             = 4
  }
  social = {
    name                      = "collect-social"
    max_dispatches_per_second = 20
    max_concurrent_dispatches = 50
    max_attempts              = 5
    min_backoff_seconds       = 10
    max_backoff_seconds       = 600
    max_doublings             = 4
  }
  email-digest = {
    name                      = "collect-email-digest"
    max_dispatches_per_second = 5
    max_concurrent_dispatches = 10
    max_attempts              = 3
    min_backoff_seconds       = 30
    max_backoff_seconds       = 900
    max_doublings             = 3
  }
}

# Sized by the capacity model for 100,000 due subscriptions x 3 sources in one minute
# (bench/capacity.py sized_for; docs/capacity.md; burst and pipeline re-measured 2026-12-01):
# fanout 45 instances x 6 concurrent requests (one vCPU busy while the others wait on the
# ledger and Cloud Tasks), select room for one tick per dispatcher shard. One warm select
# instance: the tick arrives every minute and a cold start eats into it. results 29 x 6: the
# tick's 300,000 outcome messages (one per task) recorded within the minute at 4.52 ms of CPU
# each. Ledger functions x pool (6) = (45 + 29 + 2 + 2 + 5) x 6 = 498, plus deliver's 10
# instances x 1 = 508 <= 600 - 20 (fanout, results, maintenance, sync, plan-deliveries; deliver
# in deliveries.tf).
functions = {
  select            = { memory = "512Mi", cpu = "1", timeout_seconds = 120, min_instances = 1, max_instances = 32, concurrency = 1 }
  fanout            = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 45, concurrency = 6 }
  maintenance       = { memory = "512Mi", cpu = "1", timeout_seconds = 540, min_instances = 0, max_instances = 2, concurrency = 1 }
  sync              = { memory = "512Mi", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 2, concurrency = 1 }
  results           = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 29, concurrency = 6 }
  "plan-deliveries" = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 5, concurrency = 1 }
}

tasks_log_sampling_ratio = 0.1

# Monitoring notification channels (ids like projects/dispatcher-production/notificationChannels/123),
# created once in the console or with gcloud; empty means incidents open in the console only.
notification_channels = []

# The ledger's connection budget: Cloud SQL's max_connections flag on the production instance
# (set it to this value) minus the reserve. [ledger] pool_max_size in app.production.toml.
ledger_pool_max_size     = 6
database_max_connections = 600
