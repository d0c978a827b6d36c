#!/usr/bin/env bash
# Deploy the subscription dispatcher to a Google Cloud project (staging or production).
#
#   ./deploy.sh --env staging --plan      build the function archives, show the Terraform plan
#   ./deploy.sh --env staging --apply     plan, migrate the ledger, apply exactly that plan
#   ./deploy.sh --env staging --package   only build the function archives (no network)
#
# Every check that can fail without touching the network (arguments, variables, tools) runs
# first and reports everything that is missing at once; nothing calls terraform or gcloud before.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TF_DIR="$ROOT/terraform"

# The variables without a default in terraform/variables.tf (a test keeps the two lists equal).
REQUIRED_VARS=(project_id environment region tasks_location queues)

usage() {
  cat <<'EOF'
Usage: ./deploy.sh --env staging|production (--plan | --apply | --package) [options]

Actions:
  --plan                 build the function archives and show the Terraform plan
  --apply                plan, run the ledger migrations, then apply that same plan
  --package              only build the function archives into build/functions/

Options:
  --env ENV              staging or production (required)
  --var-file FILE        Terraform variables (default: terraform/environments/ENV.tfvars)
  --backend-config FILE  state backend settings (default: terraform/environments/ENV.backend.hcl)
  --build-dir DIR        where archives and the saved plan go (default: build/)
  --skip-migrations      --apply without running the ledger migrations
  --yes                  --apply without asking for confirmation
  -h, --help             this text

Required variables (in the var file, or exported as TF_VAR_<name>):
  project_id environment region tasks_location queues

Migrations read DATABASE_URL from the environment if set, otherwise from the Secret Manager
secret named by database_url_secret_id (default dispatcher-database-url).
EOF
}

die_usage() {
  echo "error: $1" >&2
  echo "Run ./deploy.sh --help for usage." >&2
  exit 2
}

env_name=""
action=""
var_file=""
backend_file=""
build_dir=""
skip_migrations=0
assume_yes=0

while [ $# -gt 0 ]; do
  case "$1" in
    --env)
      [ $# -ge 2 ] || die_usage "--env needs a value (staging or production)"
      env_name=$2
      shift 2
      ;;
    --env=*)
      env_name=${1#--env=}
      shift
      ;;
    --plan | --apply | --package)
      [ -z "$action" ] || die_usage "choose one of --plan, --apply, --package"
      action=${1#--}
      shift
      ;;
    --var-file)
      [ $# -ge 2 ] || die_usage "--var-file needs a path"
      var_file=$2
      shift 2
      ;;
    --backend-config)
      [ $# -ge 2 ] || die_usage "--backend-config needs a path"
      backend_file=$2
      shift 2
      ;;
    --build-dir)
      [ $# -ge 2 ] || die_usage "--build-dir needs a path"
      build_dir=$2
      shift 2
      ;;
    --skip-migrations)
      skip_migrations=1
      shift
      ;;
    --yes)
      assume_yes=1
      shift
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    *)
      die_usage "unknown argument: $1"
      ;;
  esac
done

case "$env_name" in
  staging | production) ;;
  "") die_usage "--env is required (staging or production)" ;;
  *) die_usage "--env must be staging or production, not '$env_name'" ;;
esac
[ -n "$action" ] || die_usage "choose an action: --plan, --apply or --package"

var_file=${var_file:-$TF_DIR/environments/$env_name.tfvars}
backend_file=${backend_file:-$TF_DIR/environments/$env_name.backend.hcl}
build_dir=${build_dir:-$ROOT/build}

# The value of a top-level `name = value` line of an HCL file, without quotes ("" if absent).
# Enough for the flat tfvars and backend files we keep; Terraform does the real parsing later.
hcl_value() {
  local file=$1 name=$2 line value
  line=$(grep -E "^[[:space:]]*${name}[[:space:]]*=" "$file" | head -n 1 || true)
  [ -n "$line" ] || return 0
  value=${line#*=}
  value=${value%%#*}
  value=$(printf '%s' "$value" | sed -E 's/^[[:space:]]+//; s/[[:space:]]+$//; s/^"(.*)"$/\1/')
  printf '%s' "$value"
}

# A variable is set when TF_VAR_<name> is non-empty or the var file gives it a non-empty value.
variable_value() {
  local name=$1 env_var="TF_VAR_$1"
  if [ -n "${!env_var:-}" ]; then
    printf '%s' "${!env_var}"
  elif [ -f "$var_file" ]; then
    hcl_value "$var_file" "$name"
  fi
}

problems=()
missing_vars=()

if [ "$action" != package ]; then
  if [ ! -f "$var_file" ]; then
    problems+=("variables file not found: $var_file")
  fi
  for name in "${REQUIRED_VARS[@]}"; do
    if [ -z "$(variable_value "$name")" ]; then
      missing_vars+=("$name")
    fi
  done
  if [ ${#missing_vars[@]} -gt 0 ]; then
    problems+=("missing variables for $env_name: ${missing_vars[*]} (set them in $var_file or export TF_VAR_<name>)")
  fi
  declared_env=$(variable_value environment)
  if [ -n "$declared_env" ] && [ "$declared_env" != "$env_name" ]; then
    problems+=("$var_file declares environment = \"$declared_env\" but --env is $env_name")
  fi
  if [ ! -f "$backend_file" ]; then
    problems+=("backend configuration not found: $backend_file (needs bucket and prefix)")
  else
    for key in bucket prefix; do
      if [ -z "$(hcl_value "$backend_file" "$key")" ]; then
        problems+=("missing $key in $backend_file")
      fi
    done
  fi
fi

tools=(python3)
if [ "$action" != package ]; then
  tools+=(terraform gcloud)
fi
for tool in "${tools[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    problems+=("$tool is not installed or not on PATH")
  fi
done

if [ ${#problems[@]} -gt 0 ]; then
  echo "error: deploy.sh --env $env_name --$action cannot start:" >&2
  for problem in "${problems[@]}"; do
    echo "  - $problem" >&2
  done
  exit 2
fi

log() { echo "==> $*" >&2; }

# The interpreter that runs the packager and the migrations: the project's venv if there is one.
python_bin() {
  if [ -x "$ROOT/.venv/bin/python" ]; then
    printf '%s' "$ROOT/.venv/bin/python"
  else
    command -v python3
  fi
}

# One deterministic zip per function: identical sources give identical bytes, so the object name
# (which carries the archive's hash) changes, and the function redeploys, only when code changed.
package() {
  local out="$build_dir/functions"
  log "packaging functions into $out"
  "$(python_bin)" - "$ROOT" "$out" <<'PY'
import sys
import tomllib
import zipfile
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
requirements = "".join(
    f"{dep}\n" for dep in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
)
# The operator CLI (shared/cli) stays out: no function imports it, and it pulls in emulators/.
common: list[tuple[str, Path]] = []
for directory in ("shared", "schemas"):
    for path in sorted((root / directory).rglob("*")):
        relative = path.relative_to(root)
        if relative.parts[:2] == ("shared", "cli") or "__pycache__" in relative.parts:
            continue
        if path.is_file() and path.suffix != ".pyc":
            common.append((relative.as_posix(), path))
for path in sorted(root.glob("app*.toml")) + [root / "topics.yaml"]:
    common.append((path.name, path))


def add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


functions = sorted(p.parent.name for p in (root / "functions").glob("*/main.py"))
if not functions:
    sys.exit("error: no functions/<name>/main.py found")
for name in functions:
    target = out / f"{name}.zip"
    with zipfile.ZipFile(target, "w") as archive:
        add(archive, "main.py", (root / "functions" / name / "main.py").read_bytes())
        add(archive, "requirements.txt", requirements.encode())
        for arcname, path in common:
            add(archive, arcname, path.read_bytes())
    print(f"  {target} ({target.stat().st_size} bytes)", file=sys.stderr)
PY
}

terraform_init() {
  log "terraform init ($env_name state)"
  terraform -chdir="$TF_DIR" init -input=false -reconfigure -backend-config="$(realpath "$backend_file")"
}

terraform_plan() {
  log "terraform plan ($env_name)"
  terraform -chdir="$TF_DIR" plan -input=false -var-file="$(realpath "$var_file")" \
    -var="function_source_dir=$(realpath "$build_dir/functions")" -out="$(realpath "$build_dir")/$env_name.tfplan"
}

migrate() {
  local project secret
  if [ -z "${DATABASE_URL:-}" ]; then
    project=$(variable_value project_id)
    secret=$(variable_value database_url_secret_id)
    secret=${secret:-dispatcher-database-url}
    log "reading DATABASE_URL from secret $secret in $project"
    DATABASE_URL=$(gcloud secrets versions access latest --secret="$secret" --project="$project")
  fi
  export DATABASE_URL
  log "migrating the ledger (migrations/)"
  # The URL holds the password: pass it through the environment, never on a command line.
  (cd "$ROOT" && "$(python_bin)" -c \
    'import os, sys; from shared.ledger.migrate import main; sys.exit(main([os.environ["DATABASE_URL"]]))')
}

confirm() {
  [ "$assume_yes" -eq 1 ] && return 0
  if [ ! -t 0 ]; then
    echo "error: --apply needs --yes when not run from a terminal" >&2
    exit 2
  fi
  local answer
  read -r -p "Apply this plan to $env_name? [y/N] " answer
  [ "$answer" = y ] || [ "$answer" = yes ] || { echo "aborted" >&2; exit 1; }
}

case "$action" in
  package)
    package
    ;;
  plan)
    package
    terraform_init
    terraform_plan
    ;;
  apply)
    package
    terraform_init
    terraform_plan
    confirm
    # Migrations are additive (Flyway versioned, expand before contract): the running functions
    # keep working on the new schema, and the new code never starts on the old one.
    if [ "$skip_migrations" -eq 0 ]; then
      migrate
    else
      log "skipping migrations (--skip-migrations)"
    fi
    log "terraform apply ($env_name)"
    terraform -chdir="$TF_DIR" apply -input=false "$(realpath "$build_dir")/$env_name.tfplan"
    ;;
esac
