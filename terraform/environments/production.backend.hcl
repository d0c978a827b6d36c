# terraform init -backend-config=environments/production.backend.hcl (deploy.sh does this).
# The bucket is created once at bootstrap (README, Deployment), with versioning on.
bucket = "dispatcher-production-tfstate"
prefix = "dispatcher/production"
