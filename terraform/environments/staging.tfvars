# Staging. Every value here must agree with app.toml + app.staging.toml (tests/unit/deploy checks
# project, region, tasks location and every queue).
project_id     = "dispatcher-staging"
environment    = "staging"
region         = "europe-west1"
tasks_location = "europe-west1"

queues = {
  rss = {
    name                      = "collect-rss"
    max_dispatches_per_second = 50
    max_concurrent_dispatches = 100
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

# Staging runs small: one instance of each function is plenty; fanout keeps production's
# concurrency so the pool size and threads are exercised as in production.
functions = {
  select            = { memory = "512Mi", cpu = "1", timeout_seconds = 120, min_instances = 0, max_instances = 2, concurrency = 1 }
  fanout            = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 5, concurrency = 6 }
  maintenance       = { memory = "512Mi", cpu = "1", timeout_seconds = 540, min_instances = 0, max_instances = 1, concurrency = 1 }
  sync              = { memory = "512Mi", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 1, concurrency = 1 }
  results           = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 1, concurrency = 1 }
  "plan-deliveries" = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 1, concurrency = 1 }
}

tasks_log_sampling_ratio = 1.0

# Monitoring notification channels (ids like projects/dispatcher-staging/notificationChannels/123),
# created once in the console or with gcloud; empty means incidents open in the console only.
notification_channels = []

# (5 + 1 + 1 + 1) x 6 = 48 <= 100 - 20. [ledger] pool_max_size in app.staging.toml.
ledger_pool_max_size     = 6
database_max_connections = 100
