output "function_uris" {
  description = "Function name => Cloud Run URL (also the push audience)."
  value       = { for name, fn in google_cloudfunctions2_function.function : name => fn.service_config[0].uri }
}

output "function_service_accounts" {
  description = "Function name => runtime service account email."
  value       = { for name, sa in google_service_account.function : name => sa.email }
}

output "push_service_account" {
  description = "Identity in push OIDC tokens; equals push_auth.service_account in app.<env>.toml."
  value       = google_service_account.push.email
}

output "collector_invoker_service_account" {
  description = "Identity in Cloud Tasks OIDC tokens; equals collector.service_account in app.<env>.toml."
  value       = google_service_account.collector_invoker.email
}

output "queues" {
  description = "Source kind => full Cloud Tasks queue id."
  value       = { for kind, queue in google_cloud_tasks_queue.queue : kind => queue.id }
}
