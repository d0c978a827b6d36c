terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 6.0"
    }
  }

  # Partial configuration: deploy.sh passes environments/<env>.backend.hcl (bucket, prefix), so
  # staging and production never share a state file.
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = {
    app         = "subscription-dispatcher"
    environment = var.environment
  }
}
