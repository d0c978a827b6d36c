# Variables without a default are required: deploy.sh refuses to plan or apply until the
# environment's tfvars (or TF_VAR_<name>) sets every one of them, and a test keeps its list
# equal to this file.

variable "project_id" {
  description = "Google Cloud project id of this environment (must equal dispatcher.project in app.<env>.toml)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a Google Cloud project id (6-30 lowercase letters, digits, hyphens)."
  }
}

variable "environment" {
  description = "staging or production: becomes DISPATCHER_ENV, so the functions merge app.<environment>.toml."
  type        = string

  validation {
    condition     = contains(["staging", "production"], var.environment)
    error_message = "environment must be staging or production."
  }
}

variable "region" {
  description = "Region of the functions, the scheduler jobs and the source bucket (dispatcher.region)."
  type        = string
}

variable "tasks_location" {
  description = "Cloud Tasks location of the queues (dispatcher.tasks_location)."
  type        = string
}

variable "queues" {
  description = "One Cloud Tasks queue per source kind, keyed by kind; must equal [queues.<kind>] in app.toml + app.<env>.toml."
  type = map(object({
    name                      = string
    max_dispatches_per_second = number
    max_concurrent_dispatches = number
    max_attempts              = number
    min_backoff_seconds       = number
    max_backoff_seconds       = number
    max_doublings             = number
    # Queues carrying the kind; its rate and concurrency are split evenly over them (tasks.tf).
    shards = optional(number, 1)
  }))

  validation {
    condition     = length(var.queues) > 0
    error_message = "queues must declare at least one source kind."
  }

  validation {
    condition     = alltrue([for q in var.queues : q.shards >= 1 && q.shards <= 64 && floor(q.shards) == q.shards])
    error_message = "queues[*].shards must be a whole number in 1..64."
  }

  # Cloud Tasks refuses a queue rate above 500/s: a faster kind needs more shards.
  validation {
    condition     = alltrue([for q in var.queues : q.max_dispatches_per_second / q.shards <= 500])
    error_message = "queues[*].max_dispatches_per_second / shards must not exceed 500 (Cloud Tasks' per-queue maximum): raise shards."
  }

  validation {
    condition     = alltrue([for q in var.queues : ceil(q.max_concurrent_dispatches / q.shards) <= 5000])
    error_message = "queues[*].max_concurrent_dispatches / shards must not exceed 5000 (Cloud Tasks' per-queue maximum): raise shards."
  }
}

variable "database_url_secret_id" {
  description = "Secret Manager secret (created at bootstrap) whose latest version is the ledger's DATABASE_URL."
  type        = string
  default     = "dispatcher-database-url"
}

variable "firestore_database" {
  description = "Firestore database holding the subscriptions collection."
  type        = string
  default     = "(default)"
}

variable "function_source_dir" {
  description = "Directory with <function>.zip archives built by deploy.sh (default: ../build/functions)."
  type        = string
  default     = ""
}

variable "functions" {
  description = "Runtime sizing per function."
  type = map(object({
    memory          = string
    cpu             = string
    timeout_seconds = number
    min_instances   = number
    max_instances   = number
    concurrency     = number
  }))
  default = {
    select            = { memory = "512Mi", cpu = "1", timeout_seconds = 120, min_instances = 0, max_instances = 5, concurrency = 1 }
    fanout            = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 50, concurrency = 1 }
    maintenance       = { memory = "512Mi", cpu = "1", timeout_seconds = 540, min_instances = 0, max_instances = 2, concurrency = 1 }
    sync              = { memory = "512Mi", cpu = "1", timeout_seconds = 300, min_instances = 0, max_instances = 2, concurrency = 1 }
    results           = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 20, concurrency = 1 }
    "plan-deliveries" = { memory = "512Mi", cpu = "1", timeout_seconds = 60, min_instances = 0, max_instances = 5, concurrency = 1 }
  }
}

variable "ledger_pool_max_size" {
  description = "Connections one instance's ledger pool may open ([ledger] pool_max_size in app.<env>.toml, which a test keeps equal): one per concurrent request."
  type        = number
  default     = 8
}

variable "database_max_connections" {
  description = "The ledger database's max_connections (the Cloud SQL flag; every tfvars sets it): the functions' pools must fit inside it."
  type        = number
  default     = 100
}

variable "database_reserved_connections" {
  description = "Connections kept out of the functions' budget: superuser slots, migrations, operators' psql, monitoring."
  type        = number
  default     = 20
}

variable "ingress_settings" {
  description = "Function ingress. Pub/Sub push from the same project counts as internal traffic for Cloud Run."
  type        = string
  default     = "ALLOW_INTERNAL_ONLY"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.ingress_settings)
    error_message = "ingress_settings must be ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "scheduler_retry" {
  description = "Retry policy of every Cloud Scheduler job when its publish fails."
  type = object({
    retry_count          = number
    min_backoff_seconds  = number
    max_backoff_seconds  = number
    max_doublings        = number
    max_retry_duration_s = number
  })
  # A tick retried after its minute only overlaps the next one (select is idempotent), so retry
  # briefly and give up within the minute.
  default = {
    retry_count          = 3
    min_backoff_seconds  = 5
    max_backoff_seconds  = 20
    max_doublings        = 2
    max_retry_duration_s = 50
  }
}

variable "scheduler_paused" {
  description = "Pause every scheduler job (e.g. while a staging project is idle)."
  type        = bool
  default     = false
}

variable "tasks_log_sampling_ratio" {
  description = "Fraction of Cloud Tasks operations logged to Cloud Logging."
  type        = number
  default     = 0.1
}

variable "notification_channels" {
  description = "Monitoring notification channel ids (projects/<project>/notificationChannels/<id>) every alert policy notifies; created once per project, outside this configuration."
  type        = list(string)
  default     = []
}

variable "alert_thresholds" {
  description = "Thresholds of the alert policies in monitoring.tf."
  type = object({
    fanout_retry_ratio         = number
    dispatch_failures_per_5m   = number
    task_attempt_delay_seconds = number
  })
  # A dependency blip causes a short burst of retries that heals by itself: alert when one
  # decision in ten asks for redelivery for ten minutes. Any refused task is worth a
  # look. Tasks are jittered inside their minute, so five minutes late is a real backlog.
  default = {
    fanout_retry_ratio         = 0.1
    dispatch_failures_per_5m   = 0
    task_attempt_delay_seconds = 300
  }
}
