#!/usr/bin/env bash
# Builds the Debian package and checks it for real on this machine (run by scripts/test.sh):
# the release binary's hot functions come first in its code (build.rs), lintian (no errors), then
# `dpkg -i`, and on the installed files: no user created and nothing enabled, systemd-analyze
# verify and security, `zenml-rotator check` on the installed policy,
# the man pages render, bash/zsh/fish load the completions, the schema is the binary's; then an
# edited policy survives a reinstall, `dpkg -r` keeps the policy and the state directory, and
# `dpkg -P` removes the policy but keeps the state and the operator's credentials.
# Needs root (dpkg) and installs what it lacks (lintian, man-db, zsh, fish) with apt-get.
# Leaves the machine as it found it: the package is purged on the way out, pass or fail.
#
#   scripts/check-package.sh            (builds with scripts/build-deb.sh; DEB=path to test one)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PACKAGE=zenml-rotator
SECURITY_MAX=20 # systemd-analyze security --threshold, in tenths (as scripts/check-deploy.sh: 2.0)
log() { printf '[check-package] %s\n' "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"

# ---- tools ----------------------------------------------------------------------------------
missing=()
command -v lintian >/dev/null 2>&1 || missing+=(lintian)
command -v man >/dev/null 2>&1 || missing+=(man-db)
command -v zsh >/dev/null 2>&1 || missing+=(zsh)
command -v fish >/dev/null 2>&1 || missing+=(fish)
command -v dpkg-shlibdeps >/dev/null 2>&1 || missing+=(dpkg-dev)
command -v nm >/dev/null 2>&1 || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- build and lint -------------------------------------------------------------------------
given=${DEB:-}
DEB=${DEB:-$(scripts/build-deb.sh)}
if [ -z "$given" ]; then
  # build.rs had the linker put the functions a pass runs first in .text (link/hot-functions.txt):
  # without it the binary keeps ~3 MB more resident (bench/README.md). The package's binary is
  # stripped, so the release build it came from is read.
  # A symbol's name carries a hash of its crate's build settings: a dependency update or a
  # profile change renames many, and the list has to be made again (bench/hot-functions.sh).
  bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/zenml-rotator
  first=$(nm -n "$bin" | awk '$2 ~ /^[tT]$/ && n++ < 200 {print $3}')
  off=$(grep -cvxFf link/hot-functions.txt <<<"$first" || true)
  [ "$off" = 0 ] || fail "$off of the first 200 functions of $bin are not in link/hot-functions.txt: the link did not take the symbol order (build.rs)"
  listed=$(sort -u link/hot-functions.txt | wc -l)
  present=$(nm "$bin" | awk '{print $NF}' | sort -u | comm -12 - <(sort -u link/hot-functions.txt) | wc -l)
  [ $((present * 100)) -ge $((listed * 90)) ] ||
    fail "only $present of the $listed functions in link/hot-functions.txt are in $bin: the list is stale, run bench/hot-functions.sh"
  log "the release binary's .text starts with link/hot-functions.txt ($present of its $listed functions present)"
fi
log "lintian $(lintian --version | awk '{print $2}'): $DEB"
# Errors fail the check; warnings and the overrides (deploy/debian/lintian-overrides, each with
# its reason) are shown.
lintian --fail-on error --display-info --show-overrides "$DEB" >&2 || fail "lintian reports errors"
log "contents:"
dpkg-deb --contents "$DEB" | awk '{print "  " $1, $2, $6}' >&2

# ---- install --------------------------------------------------------------------------------
state=/var/lib/zenml-rotator
made_state=
credential=/etc/zenml-rotator/credentials/zenml-password
cleanup() {
  dpkg -P "$PACKAGE" >/dev/null 2>&1 || true
  rm -f "$credential"
  rmdir /etc/zenml-rotator/credentials /etc/zenml-rotator 2>/dev/null || true
  [ -z "$made_state" ] || rm -rf "$state"
}
trap cleanup EXIT
if dpkg-query -W "$PACKAGE" >/dev/null 2>&1; then
  log "purging the $PACKAGE installed before this check"
  dpkg -P "$PACKAGE" >/dev/null
fi
accounts_before=$(cat /etc/passwd /etc/group | sort | md5sum)
log "dpkg -i"
DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" >&2 || fail "dpkg -i"
[ "$(dpkg-query -W -f='${Status}' "$PACKAGE")" = "install ok installed" ] || fail "not installed"

log "installed files"
[ "$(/usr/bin/zenml-rotator --version)" = "zenml-rotator $(dpkg-query -W -f='${Version}' "$PACKAGE")" ] \
  || fail "/usr/bin/zenml-rotator --version does not match the package version"
[ "$(stat -c '%U:%G %a' /etc/zenml-rotator/config.toml)" = "root:root 640" ] || fail "policy is not root:root 0640"
[ "$(stat -c '%U:%G %a' /etc/zenml-rotator/credentials)" = "root:root 700" ] || fail "credentials dir is not root:root 0700"
dpkg-query -W -f='${Conffiles}\n' "$PACKAGE" | grep -q '^ /etc/zenml-rotator/config.toml ' \
  || fail "the policy is not a conffile"
[ "$(cat /etc/passwd /etc/group | sort | md5sum)" = "$accounts_before" ] || fail "installing changed /etc/passwd or /etc/group"
units=(zenml-rotator.service zenml-rotator-once.service zenml-rotator.timer)
for unit in "${units[@]}"; do
  [ -f "/lib/systemd/system/$unit" ] || fail "$unit is not installed"
  state_of=$(systemctl --root=/ is-enabled "$unit" 2>/dev/null || true)
  case $state_of in disabled|static) ;; *) fail "$unit is $state_of after installation" ;; esac
done
if find /etc/systemd/system -lname '*zenml-rotator*' | grep -q .; then fail "an enablement link exists"; fi

log "systemd-analyze verify + security on the installed units"
out=$(systemd-analyze verify --man=no --generators=no "${units[@]/#//lib/systemd/system/}" 2>&1) \
  || { printf '%s\n' "$out" >&2; fail "systemd-analyze verify"; }
[ -z "$out" ] || { printf '%s\n' "$out" >&2; fail "systemd-analyze verify printed warnings"; }
for unit in zenml-rotator.service zenml-rotator-once.service; do
  score=$(systemd-analyze security --offline=yes "/lib/systemd/system/$unit" 2>&1 |
    sed -nE 's/.*Overall exposure level for [^:]+: ([0-9.]+).*/\1/p')
  log "  $unit: exposure ${score:-?}"
  systemd-analyze security --offline=yes --threshold="$SECURITY_MAX" "/lib/systemd/system/$unit" >/dev/null 2>&1 \
    || fail "$unit: exposure ${score:-?} is above the limit"
done

log "zenml-rotator check on the installed policy"
out=$(env -i PATH=/usr/bin:/bin zenml-rotator check -c /etc/zenml-rotator/config.toml 2>&1) || fail "check: $out"
[ "$out" = "ok: 2 keys, 2 stores" ] || fail "check said: $out"

log "man pages"
for page in /usr/share/man/man1/zenml-rotator*.1.gz; do
  warnings=$(MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null) || fail "man -l $page"
  [ -z "$warnings" ] || { printf '%s\n' "$warnings" >&2; fail "man warns about $page"; }
done
MANWIDTH=80 man -l /usr/share/man/man1/zenml-rotator.1.gz 2>/dev/null | grep -q 'EXIT STATUS' \
  || fail "zenml-rotator(1) lacks its EXIT STATUS section"
[ "$(man -w zenml-rotator-check)" = /usr/share/man/man1/zenml-rotator-check.1.gz ] || fail "man -w zenml-rotator-check"

log "completions"
bash -c 'source /usr/share/bash-completion/completions/zenml-rotator && complete -p zenml-rotator' >/dev/null \
  || fail "bash does not load the completion"
zsh -n /usr/share/zsh/vendor-completions/_zenml-rotator || fail "zsh: syntax"
fish --no-execute /usr/share/fish/vendor_completions.d/zenml-rotator.fish || fail "fish: syntax"
fish -c 'complete -C "zenml-rotator ch"' | grep -q '^check' || fail "fish does not complete zenml-rotator ch"

log "schema"
cmp -s <(zenml-rotator schema) /usr/share/zenml-rotator/zenml-rotator.schema.json || fail "installed schema differs"

# ---- reinstall, remove, purge ---------------------------------------------------------------
log "an edited policy survives a reinstall"
echo '# edited by the operator' >>/etc/zenml-rotator/config.toml
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$DEB" >&2 || fail "reinstall"
tail -n1 /etc/zenml-rotator/config.toml | grep -q 'edited by the operator' || fail "reinstall replaced the edited policy"

log "dpkg -r keeps the policy and the state directory"
if [ ! -e "$state" ]; then
  mkdir -p "$state/journal" && echo '{}' >"$state/journal/marker.json" && made_state=1
fi
install -m 0600 /dev/null "$credential"
dpkg -r "$PACKAGE" >&2 || fail "dpkg -r"
[ "$(dpkg-query -W -f='${Status}' "$PACKAGE")" = "deinstall ok config-files" ] || fail "not in config-files state"
[ ! -e /usr/bin/zenml-rotator ] || fail "the binary is left"
for unit in "${units[@]}"; do [ ! -e "/lib/systemd/system/$unit" ] || fail "$unit is left"; done
[ ! -e /usr/share/man/man1/zenml-rotator.1.gz ] || fail "the man page is left"
tail -n1 /etc/zenml-rotator/config.toml | grep -q 'edited by the operator' || fail "the policy was not kept"
[ -d "$state" ] || fail "the state directory is gone"

log "dpkg -P removes the policy, keeps the state and the operator's credentials"
dpkg -P "$PACKAGE" >&2 || fail "dpkg -P"
! dpkg-query -W "$PACKAGE" >/dev/null 2>&1 || fail "still known to dpkg after purge"
[ ! -e /etc/zenml-rotator/config.toml ] || fail "purge left the policy"
[ -f "$credential" ] || fail "purge removed the operator's credential"
[ -d "$state" ] || fail "purge removed the state directory"

log "package checks passed"
