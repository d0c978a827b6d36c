# Topics, dead-letter topics, push subscriptions and operator subscriptions, all for_each'd over
# topics.yaml (local.topics).

resource "google_pubsub_topic" "topic" {
  for_each = local.topics

  name = each.key
}

resource "google_pubsub_topic" "dead_letter" {
  for_each = local.topics

  name                       = each.value.dead_letter.topic
  message_retention_duration = "${local.dead_letter_retention_seconds}s"
}

# Explicit push subscription (not an Eventarc trigger) so that retry, dead-letter and ack deadline
# are exactly those of topics.yaml. Pub/Sub attaches an OIDC token signed as the push account
# whose audience is the function URL; Cloud Run checks it (run.invoker) and the function checks
# it again when DISPATCHER_PUSH_AUTH_VERIFY is true.
resource "google_pubsub_subscription" "push" {
  for_each = local.topics

  name                 = each.value.push.subscription
  topic                = google_pubsub_topic.topic[each.key].id
  ack_deadline_seconds = each.value.push.ack_deadline_seconds

  push_config {
    push_endpoint = google_cloudfunctions2_function.function[each.value.push.function].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.push.email
      audience              = google_cloudfunctions2_function.function[each.value.push.function].service_config[0].uri
    }
  }

  retry_policy {
    minimum_backoff = "${each.value.push.retry.min_backoff_seconds}s"
    maximum_backoff = "${each.value.push.retry.max_backoff_seconds}s"
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = each.value.push.max_delivery_attempts
  }

  # A subscription that never expires, whatever the traffic.
  expiration_policy {
    ttl = ""
  }

  # Dead-lettering fails silently unless the Pub/Sub service agent can publish to the DLQ.
  depends_on = [google_pubsub_topic_iam_member.pubsub_agent_publishes_dead_letters]
}

# Pull subscriptions for operators (`dispatcher deadletters list|replay|purge`).
resource "google_pubsub_subscription" "dead_letter" {
  for_each = local.topics

  name                       = each.value.dead_letter.subscription
  topic                      = google_pubsub_topic.dead_letter[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "${local.dead_letter_subscription_retention_seconds}s"

  expiration_policy {
    ttl = ""
  }
}

# Events our functions publish for later steps (topics.yaml `events`), each with a pull "tap"
# subscription so nothing published before its consumer exists is lost, and operators can look.
resource "google_pubsub_topic" "event" {
  for_each = local.events

  name = each.key
}

resource "google_pubsub_subscription" "event_tap" {
  for_each = local.events

  name                       = each.value.subscription
  topic                      = google_pubsub_topic.event[each.key].id
  ack_deadline_seconds       = 60
  message_retention_duration = "${each.value.retention_days * 86400}s"

  expiration_policy {
    ttl = ""
  }
}
