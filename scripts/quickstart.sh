#!/usr/bin/env bash
# The quickstart: one command that shows a real rotation on a local ZenML server.
# It builds zenml-rotator, starts a throwaway ZenML server on a free loopback port, creates a demo
# service account and API key, shows `plan`, rotates the key into the `file` store, shows the old
# and the new value both logging in during the retain window, and stops the server.
# Nothing outside this checkout is touched: the server, its data and the demo files live under
# .peers/ (git-ignored) and are removed at the end.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '$ %s\n' "$*"; "$@"; }

export ZR_RUN_DIR="$ROOT/.peers/quickstart"
DEMO="$ZR_RUN_DIR/demo"

step "Building zenml-rotator (debug profile: the quickest build; use --release for production)"
cargo build --quiet
BIN="$ROOT/target/debug/zenml-rotator"

step "Installing and starting a local ZenML server (real OAuth2 auth; first run installs it, ~2 min)"
scripts/peers.sh install zenml
trap 'scripts/peers.sh stop' EXIT
scripts/peers.sh start zenml
# shellcheck disable=SC1091
source "$ZR_RUN_DIR/env"
mkdir -p "$DEMO"

api() { # method path [json] -- as the admin
  local token
  token=$(curl -fsS -X POST "$ZR_ZENML_URL/api/v1/login" -d grant_type=password -d username="$ZR_ZENML_ADMIN" \
    --data-urlencode password="$ZR_ZENML_ADMIN_PASSWORD" | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -fsS -X "$1" "$ZR_ZENML_URL$2" -H "Authorization: Bearer $token" -H 'Content-Type: application/json' ${3:+-d "$3"}
}
key_works() { # value -> "accepted" | "rejected" (GET /current-user with the key: mints no token)
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $1" "$ZR_ZENML_URL/api/v1/current-user")
  if [ "$code" = 200 ]; then echo accepted; else echo "rejected ($code)"; fi
}
fp() { printf '%s' "$1" | sha256sum | cut -c1-8; }

step "Creating the demo service account 'quickstart-pipelines' with API key 'default'"
SA_ID=$(api POST /api/v1/service_accounts '{"name":"quickstart-pipelines","active":true}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
OLD_KEY=$(api POST "/api/v1/service_accounts/$SA_ID/api_keys" '{"name":"default","description":"demo"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["body"]["key"])')
echo "the workload's current key: fingerprint $(fp "$OLD_KEY") (key values are never printed)"

cat >"$DEMO/zenml-rotator.toml" <<TOML
[zenml]
url = "$ZR_ZENML_URL"
username = "$ZR_ZENML_ADMIN"
password_env = "QUICKSTART_ZENML_PASSWORD"

[defaults]
every = "30d"
retain = "5m"          # the old value keeps working for 5 minutes after a rotation

[state]
dir = "$DEMO/state"

[stores.local]
kind = "file"
dir = "$DEMO/keys"

[[key]]
name = "quickstart"
service_account = "quickstart-pipelines"
api_key = "default"
store = "local"
path = "quickstart.env"
TOML
export QUICKSTART_ZENML_PASSWORD="$ZR_ZENML_ADMIN_PASSWORD"
CFG="$DEMO/zenml-rotator.toml"
echo "policy file: $CFG"

step "Validating the policy (no network)"
show "$BIN" check -c "$CFG"

step "What a pass would do now (read-only)"
show "$BIN" plan -c "$CFG"

step "One pass: rotate what is due into the file store"
show "$BIN" once -c "$CFG"

NEW_KEY=$(sed -n 's/^ZENML_STORE_API_KEY=//p' "$DEMO/keys/quickstart.env")
step "The store now holds the new value ($DEMO/keys/quickstart.env, mode $(stat -c %a "$DEMO/keys/quickstart.env"))"
sed 's/^ZENML_STORE_API_KEY=.*/ZENML_STORE_API_KEY=<new key, fingerprint '"$(fp "$NEW_KEY")"'>/' "$DEMO/keys/quickstart.env"

step "Inside the retain window both values log in"
echo "old value $(fp "$OLD_KEY"): $(key_works "$OLD_KEY")"
echo "new value $(fp "$NEW_KEY"): $(key_works "$NEW_KEY")"

step "A second rotation inside the window is refused (it would cut off the old value at once)"
set +e
"$BIN" rotate -c "$CFG" quickstart
code=$?
set -e
echo "exit code $code"

step "The plan now waits for the window to end"
show "$BIN" plan -c "$CFG"

step "Done: stopping the server and removing the demo"
rm -rf "$DEMO"
