terraform {
  required_version = ">= 1.5"

  required_providers {
    # The current major, from the release tests/unit/deploy checks every name against (the schema
    # in the provider's CDK bindings, google 8.7.0): "~> 8.7" allows no older release, which could
    # lack something that check accepted. No .terraform.lock.hcl is committed yet: writing one
    # needs registry.terraform.io, which the machines that built this cannot reach; the first
    # `./deploy.sh --plan` writes it, and it belongs in git from then on.
    google = {
      source  = "hashicorp/google"
      version = "~> 8.7"
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
