# terraform init -backend-config=environments/staging.backend.hcl (deploy.sh does this).
# The bucket is created once at bootstrap (README, Deployment), with versioning on.
bucket = "dispatcher-staging-tfstate"
prefix = "dispatcher/staging"
