#!/usr/bin/env bash
# Installs the real Prometheus and Pushgateway the daemon tests scrape and push to (Debian packages
# `prometheus` and `prometheus-pushgateway`), when they are missing. Idempotent.
# The tests start their own instances on free loopback ports with temporary storage and stop them
# by PID; nothing here starts a service (a machine with systemd may start the packaged units on
# install: the tests never talk to those).
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || missing+=(prometheus-pushgateway)
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install ${missing[*]} (Debian packages) as root" >&2; exit 1; }
  as_root=(sudo)
fi
echo "[install] ${missing[*]} (apt-get)" >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
