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

# Staging runs small: one instance of each function is plenty.
functions = {
  select            = { memory = "512Mi", cpu = "1", timeout_seconds = 120, min_instances = 0, max_instances = 2, concurrency = 1 }
  fanout            = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 5, concurrency = 1 }
  maintenance       = { memory = "512Mi", cpu = "1", timeout_seconds = 540, min_instances = 0, max_instances = 1, concurrency = 1 }
  sync              = { memory = "512Mi", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 1, concurrency = 1 }
  results           = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 1, concurrency = 1 }
  "plan-deliveries" = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 1, concurrency = 1 }
}

tasks_log_sampling_ratio = 1.0
