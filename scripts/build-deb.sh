#!/usr/bin/env bash
# Builds the Debian package of zenml-rotator from this repository, with dpkg-deb:
#
#   scripts/build-deb.sh          -> target/debian/zenml-rotator_VERSION_ARCH.deb (path on stdout)
#
# Builds the release binary first (cargo build --release --locked) unless BIN=path/to/binary is
# given. DEBFULLNAME / DEBEMAIL name the maintainer; SOURCE_DATE_EPOCH (default: the last
# commit's time) fixes every date in the package, so the same commit gives the same package.
#
# What the package holds, and why each file is where it is (Debian policy, FHS):
#   /usr/bin/zenml-rotator                          the binary, stripped (its symbols: target/debian/zenml-rotator.debug)
#   /lib/systemd/system/zenml-rotator{,-once}.service, zenml-rotator.timer   deploy/systemd/, unchanged
#   /etc/zenml-rotator/config.toml                  conffile, root:root 0640 (deploy/systemd/config.toml)
#   /etc/zenml-rotator/credentials/                 root:root 0700, empty: LoadCredential= sources
#   /usr/share/man/man1/zenml-rotator*.1.gz         `zenml-rotator man`
#   /usr/share/bash-completion/completions/zenml-rotator, /usr/share/zsh/vendor-completions/_zenml-rotator,
#   /usr/share/fish/vendor_completions.d/zenml-rotator.fish      `zenml-rotator completions SHELL`
#   /usr/share/zenml-rotator/zenml-rotator.schema.json           `zenml-rotator schema`
#   /usr/share/doc/zenml-rotator/                   copyright, changelog, README, deploy notes, examples
# Maintainer scripts (deploy/debian/): nothing is enabled or started, no user is created (the
# units use DynamicUser=); removal stops running units and keeps the policy and the state.
set -euo pipefail
umask 022
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
log() { printf '[build-deb] %s\n' "$*" >&2; }

PACKAGE=zenml-rotator
VERSION=$(python3 -c 'import tomllib; print(tomllib.load(open("Cargo.toml", "rb"))["package"]["version"])')
ARCH=$(dpkg --print-architecture)
MAINTAINER="${DEBFULLNAME:-zenml-rotator packagers} <${DEBEMAIL:-packagers@zenml-rotator.invalid}>"
if [ -z "${BIN:-}" ]; then
  log "cargo build --release --locked"
  cargo build --release --locked >&2
  BIN=$TARGET/release/zenml-rotator
fi
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 1; }
# Exported only now: build scripts that read it would make cargo rebuild the dependencies.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

OUT=$TARGET/debian
STAGE=$OUT/$PACKAGE
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN"
DOC=$STAGE/usr/share/doc/$PACKAGE

install -D -m 0755 "$BIN" "$STAGE/usr/bin/zenml-rotator"
# Debian ships stripped binaries (lintian: unstripped-binary-or-object), as dh_strip makes them:
# the symbol table goes to a detached file beside the package (target/debian/zenml-rotator.debug,
# linked by build id and .gnu_debuglink), for `addr2line -e` or a debugger on a backtrace's
# addresses. A panic's own message keeps its file:line:col either way.
objcopy --only-keep-debug "$STAGE/usr/bin/zenml-rotator" "$OUT/zenml-rotator.debug"
chmod 0644 "$OUT/zenml-rotator.debug"
strip --strip-unneeded --remove-section=.comment "$STAGE/usr/bin/zenml-rotator"
objcopy --add-gnu-debuglink="$OUT/zenml-rotator.debug" "$STAGE/usr/bin/zenml-rotator"
for unit in zenml-rotator.service zenml-rotator-once.service zenml-rotator.timer; do
  install -D -m 0644 "deploy/systemd/$unit" "$STAGE/lib/systemd/system/$unit"
done
install -D -m 0640 deploy/systemd/config.toml "$STAGE/etc/zenml-rotator/config.toml"
install -d -m 0700 "$STAGE/etc/zenml-rotator/credentials"

mkdir -p "$STAGE/usr/share/man/man1"
"$BIN" man "$STAGE/usr/share/man/man1"
gzip -9n "$STAGE"/usr/share/man/man1/*.1

"$BIN" completions bash | install -D -m 0644 /dev/stdin "$STAGE/usr/share/bash-completion/completions/zenml-rotator"
"$BIN" completions zsh | install -D -m 0644 /dev/stdin "$STAGE/usr/share/zsh/vendor-completions/_zenml-rotator"
"$BIN" completions fish | install -D -m 0644 /dev/stdin "$STAGE/usr/share/fish/vendor_completions.d/zenml-rotator.fish"
"$BIN" schema | install -D -m 0644 /dev/stdin "$STAGE/usr/share/zenml-rotator/zenml-rotator.schema.json"

install -D -m 0644 config.example.toml "$DOC/examples/config.example.toml"
gzip -9nc README.md >"$DOC/README.md.gz"
gzip -9nc deploy/README.md >"$DOC/deploy.md.gz"
python3 deploy/debian/copyright.py >"$DOC/copyright"
DATE=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
printf '%s (%s) unstable; urgency=medium\n\n  * Built from the zenml-rotator repository at commit %s.\n\n -- %s  %s\n' \
  "$PACKAGE" "$VERSION" "$COMMIT" "$MAINTAINER" "$DATE" | gzip -9n >"$DOC/changelog.gz"
install -D -m 0644 deploy/debian/lintian-overrides "$STAGE/usr/share/lintian/overrides/$PACKAGE"
chmod 0644 "$DOC"/*.gz "$DOC/copyright"

for script in postinst prerm postrm; do
  install -m 0755 "deploy/debian/$script" "$STAGE/DEBIAN/$script"
done
echo /etc/zenml-rotator/config.toml >"$STAGE/DEBIAN/conffiles"

# The libraries the binary links (libc6, libgcc-s1) and their minimum versions, as dh_shlibdeps
# would compute them; dpkg-shlibdeps wants a debian/control beside it.
shlib=$(mktemp -d)
mkdir -p "$shlib/debian"
printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PACKAGE" "$PACKAGE" >"$shlib/debian/control"
DEPENDS=$(cd "$shlib" && dpkg-shlibdeps -O -e"$STAGE/usr/bin/zenml-rotator" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
rm -rf "$shlib"
[ -n "$DEPENDS" ] || { log "dpkg-shlibdeps found no dependencies"; exit 1; }

INSTALLED_SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat >"$STAGE/DEBIAN/control" <<CONTROL
Package: $PACKAGE
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $INSTALLED_SIZE
Depends: $DEPENDS
Section: admin
Priority: optional
Description: rotates ZenML service-account API keys into Vault, AWS or files
 zenml-rotator rotates the API keys of ZenML service accounts on a schedule,
 with ZenML's retain semantics, and writes each new value where workloads
 read it: HashiCorp Vault or OpenBao KV v2, AWS Secrets Manager, or a local
 env file. It never rotates a key whose previous value is still inside its
 retain window, never rotates into a store it cannot write, and keeps a
 rotation in flight durably until the new value is stored and verified.
 .
 It runs as a daemon (zenml-rotator.service, Prometheus metrics on
 /metrics) or one pass every 15 minutes (zenml-rotator.timer). Neither is
 enabled on installation: edit /etc/zenml-rotator/config.toml, check it with
 zenml-rotator check, put credentials in /etc/zenml-rotator/credentials/,
 then enable one of the two.
CONTROL

(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$STAGE/DEBIAN/md5sums"
chmod 0644 "$STAGE/DEBIAN/control" "$STAGE/DEBIAN/conffiles" "$STAGE/DEBIAN/md5sums"
find "$STAGE" -exec touch --no-dereference -d "@$SOURCE_DATE_EPOCH" {} +

DEB=$OUT/${PACKAGE}_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >&2
log "built $DEB"
echo "$DEB"
