#!/usr/bin/env bash
# The whole test suite against real servers: installs (once) and starts ZenML, OpenBao and moto on
# free loopback ports, runs every test, and stops the servers by PID on the way out, pass or fail.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

say() { printf '\n== %s\n' "$*" >&2; }
start=$(date +%s)

say "checking deploy/ (systemd units, Kubernetes manifests, Prometheus rules, Dockerfile)"
scripts/check-deploy.sh

say "installing the real servers (cached under .peers/)"
scripts/peers.sh install
scripts/install-prometheus.sh

say "format and lint"
cargo fmt --check
cargo clippy --all-targets --all-features -- -D warnings

say "building the tests"
if cargo nextest --version >/dev/null 2>&1; then runner=nextest; else runner=cargo-test; fi
if [ "$runner" = nextest ]; then
  cargo nextest run --all-features --no-run
else
  cargo test --all-features --no-run
fi

say "starting ZenML, OpenBao and moto"
trap 'scripts/peers.sh stop' EXIT
scripts/peers.sh start
# shellcheck disable=SC1091
source "${ZR_RUN_DIR:-$ROOT/.peers/run}/env"

say "running every test ($runner)"
if [ "$runner" = nextest ]; then
  cargo nextest run --all-features --no-fail-fast
else
  cargo test --all-features --no-fail-fast
fi

say "done in $(( $(date +%s) - start ))s"
