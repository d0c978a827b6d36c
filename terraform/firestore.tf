# The composite index behind the due query (shared/ select): on collection `subscriptions`,
#   where shard == N and status == "active" and paused == false and next_run_at <= tick
#   order by next_run_at
# Equality fields first, the range/order field last, all ascending. The query must use exactly
# these fields in this order; tests/unit/deploy reads this block as the one definition.
resource "google_firestore_index" "due_query" {
  project     = var.project_id
  database    = var.firestore_database
  collection  = "subscriptions"
  query_scope = "COLLECTION"

  fields {
    field_path = "shard"
    order      = "ASCENDING"
  }

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }

  fields {
    field_path = "paused"
    order      = "ASCENDING"
  }

  fields {
    field_path = "next_run_at"
    order      = "ASCENDING"
  }
}

# The expire job's query (shared/dal/firestore_store.py, active_ending_by): on `subscriptions`,
#   where status == "active" and ends_at <= now
resource "google_firestore_index" "expire_query" {
  project     = var.project_id
  database    = var.firestore_database
  collection  = "subscriptions"
  query_scope = "COLLECTION"

  fields {
    field_path = "status"
    order      = "ASCENDING"
  }

  fields {
    field_path = "ends_at"
    order      = "ASCENDING"
  }
}
