# One runtime identity per function, plus the identities Pub/Sub, Cloud Tasks and Cloud Build
# act as. Which roles each holds, and why, is the table in README.md (Deployment); the tests keep
# that table and iam.tf equal.

resource "google_service_account" "function" {
  for_each = local.function_topics

  account_id   = "dispatcher-${each.key}"
  display_name = "dispatcher ${each.key} function (${var.environment})"
  description  = "Runtime identity of the ${each.key} Cloud Function."
}

# Pub/Sub signs the OIDC token of every push request as this account; it may invoke the functions
# and nothing else. Its email is push_auth.service_account in app.<env>.toml.
resource "google_service_account" "push" {
  account_id   = "pubsub-push"
  display_name = "dispatcher Pub/Sub push invoker (${var.environment})"
  description  = "Identity in the OIDC token of push subscriptions to the dispatcher functions."
}

# Cloud Tasks signs the OIDC token of every collector request as this account. It holds no role
# here: the collectors' own project grants it run.invoker. Its email is collector.service_account
# in app.<env>.toml.
resource "google_service_account" "collector_invoker" {
  account_id   = "collector-invoker"
  display_name = "collector invoker (${var.environment})"
  description  = "Identity in the OIDC token of Cloud Tasks sent to collectors."
}

# Collector workers run as this account: the worker kit (shared/worker) publishes each task's
# outcome to dispatcher-results with it, and that is all it may do here.
resource "google_service_account" "collector_worker" {
  account_id   = "collector-worker"
  display_name = "collector worker (${var.environment})"
  description  = "Runtime identity of collector workers; reports task outcomes."
}

# Cloud Build builds the function images as this account instead of the default compute one.
resource "google_service_account" "build" {
  account_id   = "dispatcher-build"
  display_name = "dispatcher function build (${var.environment})"
  description  = "Builds the dispatcher function images."
}
