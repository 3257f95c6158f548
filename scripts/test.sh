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

# An older ZenML minor, for the compatibility run at the end: the client, the engine and the
# retiring strategies against another server generation (0.96.4 checks the key generation of
# tokens too, although the shared reference says it arrived in 0.97; see the README).
COMPAT_ZENML=${ZR_COMPAT_ZENML_VERSION:-0.96.4}
COMPAT_RUN="$ROOT/.peers/run-compat"

say "installing the real servers (cached under .peers/)"
scripts/peers.sh install
ZR_ZENML_VERSION=$COMPAT_ZENML scripts/peers.sh install zenml
scripts/install-prometheus.sh
scripts/install-jsonschema.sh

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

say "the Debian package: build (release), lintian, install, verify, remove, purge"
scripts/check-package.sh

say "starting ZenML, OpenBao and moto"
trap 'scripts/peers.sh stop' EXIT
scripts/peers.sh start
# shellcheck disable=SC1091
source "${ZR_RUN_DIR:-$ROOT/.peers/run}/env"

# What every rotator process wrote and every secret the tests saw, for the leak check at the end;
# the fault suite's figures (the README's Reliability section quotes them).
export ZR_TRANSCRIPTS="$ROOT/target/transcripts" ZR_FIGURES="$ROOT/target/fault-figures.txt"
rm -rf "$ZR_TRANSCRIPTS" "$ZR_FIGURES"
python3 scripts/scan-transcripts.py --self-test

say "running every test ($runner)"
if [ "$runner" = nextest ]; then
  cargo nextest run --all-features --no-fail-fast
else
  cargo test --all-features --no-fail-fast
fi

say "compatibility: the ZenML client, engine and replace tests against ZenML $COMPAT_ZENML"
trap 'scripts/peers.sh stop; ZR_RUN_DIR=$COMPAT_RUN scripts/peers.sh stop' EXIT
ZR_RUN_DIR=$COMPAT_RUN ZR_ZENML_VERSION=$COMPAT_ZENML scripts/peers.sh start zenml
# The older server replaces the ZenML variables; OpenBao and moto stay the same.
# shellcheck disable=SC1091
source "$COMPAT_RUN/env"
if [ "$runner" = nextest ]; then
  cargo nextest run --all-features --no-fail-fast -E 'binary(zenml_api) | binary(engine) | binary(retiring)'
else
  cargo test --all-features --no-fail-fast --test zenml_api --test engine --test retiring
fi

say "the fault suite's figures"
cat "$ZR_FIGURES"

say "no secret in anything the rotator wrote (invariant 4)"
python3 scripts/scan-transcripts.py "$ZR_TRANSCRIPTS"

say "done in $(( $(date +%s) - start ))s"
