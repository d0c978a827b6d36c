# Every grant of the deployment, at the narrowest scope the resource supports. README.md
# (Deployment) has one row per grant with the reason; tests/unit/deploy/test_iam.py keeps that
# table and this file equal, and fails on any primitive role (owner, editor, viewer).
# Firestore has no per-collection IAM, so the datastore roles are the only project-level grants of
# the functions.

# --- select: reads due subscriptions, advances next_run_at, publishes due messages -------------

resource "google_project_iam_member" "select_datastore_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.function["select"].email}"
}

resource "google_pubsub_topic_iam_member" "select_publishes_due" {
  topic  = google_pubsub_topic.topic["dispatcher-due"].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function["select"].email}"
}

# --- fanout and maintenance: create Cloud Tasks that carry the collector invoker's token --------
# On every shard queue of every kind (local.queue_shards, tasks.tf).

resource "google_project_iam_member" "fanout_datastore_viewer" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:${google_service_account.function["fanout"].email}"
}

resource "google_project_iam_member" "maintenance_datastore_user" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = "serviceAccount:${google_service_account.function["maintenance"].email}"
}

resource "google_cloud_tasks_queue_iam_member" "fanout_enqueues" {
  for_each = local.queue_shards

  project  = var.project_id
  location = google_cloud_tasks_queue.queue[each.key].location
  name     = google_cloud_tasks_queue.queue[each.key].name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.function["fanout"].email}"
}

resource "google_cloud_tasks_queue_iam_member" "maintenance_enqueues" {
  for_each = local.queue_shards

  project  = var.project_id
  location = google_cloud_tasks_queue.queue[each.key].location
  name     = google_cloud_tasks_queue.queue[each.key].name
  role     = "roles/cloudtasks.enqueuer"
  member   = "serviceAccount:${google_service_account.function["maintenance"].email}"
}

# Creating a task with an OIDC token for an account needs iam.serviceAccounts.actAs on it.
resource "google_service_account_iam_member" "function_acts_as_collector_invoker" {
  for_each = local.task_functions

  service_account_id = google_service_account.collector_invoker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.function[each.key].email}"
}

# --- sync: mirrors Firestore into the ledger ---------------------------------------------------

resource "google_project_iam_member" "sync_datastore_viewer" {
  project = var.project_id
  role    = "roles/datastore.viewer"
  member  = "serviceAccount:${google_service_account.function["sync"].email}"
}

# --- every function ----------------------------------------------------------------------------

# The ledger's DATABASE_URL, for the functions that use the ledger only.
resource "google_secret_manager_secret_iam_member" "function_reads_database_url" {
  for_each = local.database_functions

  project   = var.project_id
  secret_id = var.database_url_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function[each.key].email}"
}

# A function forwards a message it cannot process to its own topic's DLQ, and to no other topic.
resource "google_pubsub_topic_iam_member" "function_publishes_own_dead_letters" {
  for_each = local.topics

  topic  = google_pubsub_topic.dead_letter[each.key].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function[each.value.push.function].email}"
}

# The results function publishes run-completed (topics.yaml events name the publisher).
resource "google_pubsub_topic_iam_member" "function_publishes_events" {
  for_each = local.events

  topic  = google_pubsub_topic.event[each.key].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.function[each.value.publisher].email}"
}

# Collectors report task outcomes; they may publish to that one topic and nothing else.
resource "google_pubsub_topic_iam_member" "collectors_report_outcomes" {
  topic  = google_pubsub_topic.topic["dispatcher-results"].id
  role   = "roles/pubsub.publisher"
  member = "serviceAccount:${google_service_account.collector_worker.email}"
}

# --- Pub/Sub push ------------------------------------------------------------------------------

resource "google_cloud_run_service_iam_member" "push_invokes_function" {
  for_each = local.function_topics

  project  = var.project_id
  location = google_cloudfunctions2_function.function[each.key].location
  service  = google_cloudfunctions2_function.function[each.key].name
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.push.email}"
}

# Projects created before April 2021 do not grant this implicitly; granting it on the one account
# (not the project) is harmless elsewhere.
resource "google_service_account_iam_member" "pubsub_agent_signs_push_tokens" {
  service_account_id = google_service_account.push.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# Dead-lettering: the service agent publishes to each DLQ and acks on each source subscription.
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  for_each = local.topics

  topic  = google_pubsub_topic.dead_letter[each.key].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "pubsub_agent_subscribes_sources" {
  for_each = local.topics

  subscription = google_pubsub_subscription.push[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

# --- Cloud Build ---------------------------------------------------------------------------------

resource "google_project_iam_member" "build_writes_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.build.email}"
}

# The build reads the source that Cloud Functions copies into its own gcf-v2-sources-* bucket,
# which the service creates on first deploy: there is no bucket of ours to bind to.
resource "google_project_iam_member" "build_reads_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = "serviceAccount:${google_service_account.build.email}"
}

resource "google_artifact_registry_repository_iam_member" "build_pushes_images" {
  project    = var.project_id
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}
