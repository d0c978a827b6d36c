# Monitoring as code: log-based metrics read from the functions' structured logs, alert policies
# on them and on built-in Pub/Sub and Cloud Tasks metrics, and one dashboard
# (dashboards/dispatcher.json) showing the same signals.
#
# shared/logs.py writes one JSON object per line; Cloud Run keeps every field except severity,
# message-level specials and logging.googleapis.com/* in jsonPayload, so a field passed with
# `extra={...}` is jsonPayload.<field>. tests/unit/deploy/test_monitoring.py runs the real
# handler, select, fanout and reconcile code against fakes, captures those lines, and checks that
# every filter and label below matches fields and values they really carry.
#
# Gen2 functions run as Cloud Run services named like the function (dispatcher-<name>): their
# stdout is logged under resource.type "cloud_run_revision" with the service_name label.

# --- log-based metrics ---------------------------------------------------------------------------

# shared/handler.py writes exactly one line per decision on a pushed message, with `function`
# and `outcome` (acked, dead-lettered, retry, unauthorized): one count per line, by both.
resource "google_logging_metric" "outcomes" {
  name        = "dispatcher/outcomes"
  description = "One per push-handler decision (shared/handler.py), by function and outcome."
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^dispatcher-\" AND jsonPayload.logger=\"shared.handler\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "function"
      value_type  = "STRING"
      description = "select, fanout, maintenance or sync"
    }

    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "acked, dead-lettered, retry or unauthorized"
    }
  }

  label_extractors = {
    function = "EXTRACT(jsonPayload.function)"
    outcome  = "EXTRACT(jsonPayload.outcome)"
  }
}

# A tick select acknowledged: the heartbeat of the whole pipeline (absence alert below).
resource "google_logging_metric" "select_ticks" {
  name        = "dispatcher/select_acked_ticks"
  description = "Ticks the select function processed and acknowledged."
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^dispatcher-\" AND jsonPayload.logger=\"shared.handler\" AND jsonPayload.function=\"select\" AND jsonPayload.outcome=\"acked\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"
  }
}

# Cloud Tasks refused a task: fanout logs "partially-dispatched" (and marks the dispatch failed
# in the ledger, then asks Pub/Sub to redeliver), reconcile logs "failed" for a re-create.
resource "google_logging_metric" "dispatch_failures" {
  name        = "dispatcher/dispatch_failures"
  description = "Tasks Cloud Tasks did not accept (fanout partially-dispatched, reconcile failed), by code path."
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^dispatcher-\" AND jsonPayload.logger=(\"shared.usecases.fanout\" OR \"shared.ops.reconcile\") AND jsonPayload.decision=(\"partially-dispatched\" OR \"failed\")"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "logger"
      value_type  = "STRING"
      description = "shared.usecases.fanout or shared.ops.reconcile"
    }
  }

  label_extractors = {
    logger = "EXTRACT(jsonPayload.logger)"
  }
}

# Task outcomes the results function recorded (one line per result message, shared.usecases
# .results), by outcome and source kind: the dashboard's collection picture.
resource "google_logging_metric" "task_outcomes" {
  name        = "dispatcher/task_outcomes"
  description = "Task outcomes reported by collectors and recorded by the results function."
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^dispatcher-\" AND jsonPayload.logger=\"shared.usecases.results\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "outcome"
      value_type  = "STRING"
      description = "started, succeeded, failed or skipped"
    }

    labels {
      key         = "source_kind"
      value_type  = "STRING"
      description = "the source kind (one Cloud Tasks queue per kind)"
    }

    labels {
      key         = "decision"
      value_type  = "STRING"
      description = "final-failure (the dispatch ended failed) or recorded"
    }
  }

  label_extractors = {
    outcome     = "EXTRACT(jsonPayload.outcome)"
    source_kind = "EXTRACT(jsonPayload.source_kind)"
    decision    = "EXTRACT(jsonPayload.decision)"
  }
}

# Dispatches reconcile declared lost: created longer ago than the queue's retry span with no
# final outcome (shared.ops.settle_outcomes, one WARNING line each).
resource "google_logging_metric" "lost_dispatches" {
  name        = "dispatcher/lost_dispatches"
  description = "Created tasks that never reported an outcome, declared lost by reconcile."
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^dispatcher-\" AND jsonPayload.logger=\"shared.ops.settle_outcomes\" AND jsonPayload.decision=\"lost\""

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "source_kind"
      value_type  = "STRING"
      description = "the source kind (one Cloud Tasks queue per kind)"
    }
  }

  label_extractors = {
    source_kind = "EXTRACT(jsonPayload.source_kind)"
  }
}

# Scheduled digests select did not send: Cloud Tasks refused the email task (digest-failed, the
# schedule stays due and every tick tries again) or the slot outlived max_age (digest-stale).
resource "google_logging_metric" "digest_problems" {
  name        = "dispatcher/digest_problems"
  description = "Scheduled digest slots select could not plan (digest-failed) or gave up on as too old (digest-stale)."
  filter      = "resource.type=\"cloud_run_revision\" AND resource.labels.service_name=~\"^dispatcher-\" AND jsonPayload.logger=\"shared.usecases.select_digests\" AND jsonPayload.decision=(\"digest-failed\" OR \"digest-stale\")"

  metric_descriptor {
    metric_kind = "DELTA"
    value_type  = "INT64"
    unit        = "1"

    labels {
      key         = "decision"
      value_type  = "STRING"
      description = "digest-failed or digest-stale"
    }
  }

  label_extractors = {
    decision = "EXTRACT(jsonPayload.decision)"
  }
}

# --- alert policies ------------------------------------------------------------------------------
# Every policy notifies var.notification_channels (ids of channels created once per project, by
# hand or elsewhere); with none, incidents still open in the console.

# Built-in metric pubsub.googleapis.com/subscription/num_undelivered_messages on resource
# pubsub_subscription (https://cloud.google.com/monitoring/api/metrics_gcp#gcp-pubsub). Every
# dead-letter subscription of topics.yaml is named <topic>-dlq-sub, and nothing else is.
resource "google_monitoring_alert_policy" "dead_letters" {
  display_name          = "dispatcher: message in a dead-letter subscription"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "undelivered messages in a *-dlq-sub above 0"

    condition_threshold {
      filter          = "resource.type=\"pubsub_subscription\" AND metric.type=\"pubsub.googleapis.com/subscription/num_undelivered_messages\" AND resource.label.subscription_id=monitoring.regex.full_match(\".*-dlq-sub\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_MAX"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A message was dead-lettered: `dispatcher deadletters list` shows it with the reason in its attributes; replay or purge it once the cause is fixed (README, Operations)."
  }
}

# select acknowledges one tick a minute; three minutes without one means the scheduler, the push
# subscription or select itself is down. Summed across series first, so a new revision (a new
# time series) does not look like an absence.
resource "google_monitoring_alert_policy" "no_tick" {
  display_name          = "dispatcher: no acknowledged tick for 3 minutes"
  combiner              = "OR"
  severity              = "CRITICAL"
  notification_channels = var.notification_channels

  conditions {
    display_name = "select acknowledged no tick for 180s"

    condition_absent {
      filter   = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.select_ticks.name}\""
      duration = "180s"

      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      trigger {
        count = 1
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "No due subscription is being selected. Check the `dispatcher-tick` scheduler job, the `dispatcher-ticks-select` subscription and the select function's logs (`jsonPayload.function=\"select\"`)."
  }
}

# Share of fanout's decisions that asked Pub/Sub to redeliver (dependency down, tasks refused).
resource "google_monitoring_alert_policy" "fanout_retries" {
  display_name          = "dispatcher: fanout retry rate"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.notification_channels

  conditions {
    display_name = "fanout retries above ${var.alert_thresholds.fanout_retry_ratio * 100}% of its decisions"

    condition_threshold {
      filter             = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.outcomes.name}\" AND metric.label.function=\"fanout\" AND metric.label.outcome=\"retry\""
      denominator_filter = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.outcomes.name}\" AND metric.label.function=\"fanout\""
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_thresholds.fanout_retry_ratio
      duration           = "600s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }

      denominator_aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "fanout keeps asking Pub/Sub to redeliver due messages. Its log lines with `jsonPayload.outcome=\"retry\"` name the failing dependency (`error_class`)."
  }
}

# Any task Cloud Tasks refused. fanout retries on its own, so one failure can heal; the ledger
# keeps every failed dispatch (`dispatcher ledger dispatches`), and reconcile re-creates them.
resource "google_monitoring_alert_policy" "dispatch_failures" {
  display_name          = "dispatcher: failed dispatches"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "tasks not created in the last 5 minutes"

    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.dispatch_failures.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_thresholds.dispatch_failures_per_5m
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Cloud Tasks refused tasks. Failed dispatches are in the ledger with their error; reconcile re-creates them on its schedule."
  }
}

# Cloud Tasks publishes no age-of-oldest-task metric; cloudtasks.googleapis.com/queue/
# task_attempt_delays (resource cloud_tasks_queue, milliseconds) is the delay between a task's
# scheduled and actual attempt time, i.e. how far behind a queue runs
# (https://cloud.google.com/monitoring/api/metrics_gcp#gcp-cloudtasks). Per queue; the
# project holds only the var.queues queues.
resource "google_monitoring_alert_policy" "queue_delay" {
  display_name          = "dispatcher: Cloud Tasks queue running late"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.notification_channels

  conditions {
    display_name = "p99 attempt delay above ${var.alert_thresholds.task_attempt_delay_seconds}s"

    condition_threshold {
      filter          = "resource.type=\"cloud_tasks_queue\" AND metric.type=\"cloudtasks.googleapis.com/queue/task_attempt_delays\""
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_thresholds.task_attempt_delay_seconds * 1000
      duration        = "600s"

      aggregations {
        alignment_period   = "300s"
        per_series_aligner = "ALIGN_PERCENTILE_99"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A collect queue dispatches late: its rate limit is too low for its load, or collectors answer slowly or with errors (429/5xx make Cloud Tasks back off)."
  }
}

# --- dashboard -----------------------------------------------------------------------------------

# The same signals as the alerts; the JSON names the log-based metrics above by their type, and
# a test keeps those names equal to the resources'.
resource "google_monitoring_dashboard" "dispatcher" {
  dashboard_json = file("${path.module}/dashboards/dispatcher.json")

  # Charts of a metric that does not exist yet stay empty until it does: create the metrics first.
  depends_on = [
    google_logging_metric.outcomes,
    google_logging_metric.select_ticks,
    google_logging_metric.dispatch_failures,
  ]
}

# A collection that ended failed: the ledger row says why (`dispatcher ledger dispatches`).
resource "google_monitoring_alert_policy" "failed_outcomes" {
  display_name          = "dispatcher: collections that ended failed"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "final task failures in the last 5 minutes"

    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.task_outcomes.name}\" AND metric.label.decision=\"final-failure\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "A collector gave up on a task. `dispatcher ledger outcomes --since 1h` shows which source kinds; `dispatcher ledger dispatches SUBSCRIPTION` shows the last error. Replay the run with `dispatcher run SUBSCRIPTION --slot SLOT` once the collector is fixed."
  }
}

# A task that never reported: the collector crashed, lost the result, or Cloud Tasks dropped it.
resource "google_monitoring_alert_policy" "lost_outcomes" {
  display_name          = "dispatcher: tasks that never reported an outcome"
  combiner              = "OR"
  severity              = "WARNING"
  notification_channels = var.notification_channels

  conditions {
    display_name = "dispatches declared lost by reconcile"

    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.lost_dispatches.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "Tasks were created long ago (longer than their queue's retry span) and no outcome arrived. Reconcile's WARNING lines (`jsonPayload.decision=\"lost\"`) name each; check the collector's logs for that task name. A late real outcome still replaces `lost`."
  }
}

# A subscriber's scheduled digest is not going out. Each failed tick retries it, so this fires
# on the first failure; a stale slot means the digest was skipped for good.
resource "google_monitoring_alert_policy" "digest_problems" {
  display_name          = "dispatcher: scheduled digests not sent"
  combiner              = "OR"
  severity              = "ERROR"
  notification_channels = var.notification_channels

  conditions {
    display_name = "digest slots failed or skipped in the last 10 minutes"

    condition_threshold {
      filter          = "resource.type=\"cloud_run_revision\" AND metric.type=\"logging.googleapis.com/user/${google_logging_metric.digest_problems.name}\""
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"

      aggregations {
        alignment_period     = "600s"
        per_series_aligner   = "ALIGN_SUM"
        cross_series_reducer = "REDUCE_SUM"
      }
    }
  }

  documentation {
    mime_type = "text/markdown"
    content   = "select's ERROR lines (`jsonPayload.decision=\"digest-failed\"`) name the subscription, the delivery and Cloud Tasks' answer: usually the `email-deliveries` queue or select's enqueuer / email-invoker grant. The schedule stays due and each tick retries, for `max_age` (6 h); after that the slot is logged `digest-stale` and skipped, and the next digest's period covers it. `dispatcher deliveries list` shows what was sent."
  }
}
